//! The scenarios, by topic.

mod test_accounting;
mod test_address;
mod test_cold_start;
mod test_metrics;
mod test_pd_trouble;
mod test_races;
mod test_removed_store;
mod test_resolve;
