//! Raft client tests (filled in by the raft client change).
