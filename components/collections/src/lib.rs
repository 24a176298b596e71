//! `HashMap` and `HashSet` with a cheap hasher, for maps on the hot path
//! keyed by ids (store, region, connection). Upstream TiKV has a crate of
//! this name and role (tikv/tikv `components/collections`, on the `fxhash`
//! crate); this one carries its own hasher, the same multiply-rotate scheme,
//! so the workspace needs no new registry crate.
//!
//! The keys are ids the cluster assigns, not input an attacker chooses, so
//! the flooding resistance of std's SipHash buys nothing here and costs a
//! measurable share of `send` (a `perf` profile of the conn-num 4 bench:
//! SipHash of the `(store_id, conn_id)` cache key about 1.6% of the
//! process).

#![deny(missing_docs)]

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed with [`FxHasher`].
pub type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A `HashSet` hashed with [`FxHasher`].
pub type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

/// The multiplier: 2^64 divided by the golden ratio, odd, so that every
/// bit of a word reaches the high bits of the product.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A word-at-a-time hasher: each word is folded in as
/// `(state.rotate_left(5) ^ word) * SEED`. A few instructions per id.
#[derive(Clone, Copy, Default, Debug)]
pub struct FxHasher {
    state: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length too, so "a" and "a\0" differ.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash};

    use super::*;

    fn hash<T: Hash>(t: &T) -> u64 {
        BuildHasherDefault::<FxHasher>::default().hash_one(t)
    }

    #[test]
    fn ids_and_their_pairs_hash_apart() {
        // Store/connection keys of a cluster: 1000 stores, 4 connections.
        let mut seen = std::collections::HashSet::new();
        for store in 0..1000u64 {
            for conn in 0..4usize {
                assert!(seen.insert(hash(&(store, conn))), "{} {}", store, conn);
            }
        }
        // The order of a pair matters.
        assert_ne!(hash(&(1u64, 2usize)), hash(&(2u64, 1usize)));
    }

    #[test]
    fn bytes_of_every_length_hash_apart() {
        let data = b"0123456789abcdefghij";
        let hashes: std::collections::HashSet<u64> =
            (0..=data.len()).map(|n| hash(&&data[..n])).collect();
        assert_eq!(hashes.len(), data.len() + 1);
        // A trailing zero byte is not the same key.
        assert_ne!(hash(&&b"a"[..]), hash(&&b"a\0"[..]));
    }

    #[test]
    fn the_map_keeps_what_it_is_given() {
        let mut m: HashMap<(u64, usize), u64> = HashMap::default();
        for store in 0..500u64 {
            for conn in 0..4usize {
                m.insert((store, conn), store * 10 + conn as u64);
            }
        }
        assert_eq!(m.len(), 2000);
        for store in 0..500u64 {
            for conn in 0..4usize {
                assert_eq!(m[&(store, conn)], store * 10 + conn as u64);
            }
        }
        assert!(!m.contains_key(&(500, 0)));
    }
}
