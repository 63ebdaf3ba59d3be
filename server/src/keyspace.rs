//! The 128-bit hash-key space of a stream and its split into shards, as every HStreamDB client
//! computes it: `MD5(utf8 key)` read as a big-endian unsigned integer; shard `i` of `n` covers
//! `[i*c, i*c + c - 1]` with `c = (2^128 - 1) / n`, the last shard ending at `2^128 - 1`.

use md5::{Digest, Md5};

/// Inclusive hash ranges of `n` shards.
pub fn split(n: u32) -> Vec<(u128, u128)> {
    let n = n.max(1) as u128;
    let c = u128::MAX / n;
    (0..n)
        .map(|i| {
            let start = i * c;
            let end = if i == n - 1 { u128::MAX } else { start + c - 1 };
            (start, end)
        })
        .collect()
}

pub fn key_hash(key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(key.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_md5() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn two_shards_match_hstream() {
        let r = split(2);
        assert_eq!(r[0], (0, u128::MAX / 2 - 1));
        assert_eq!(r[1], (u128::MAX / 2, u128::MAX));
    }

    proptest! {
        #[test]
        fn ranges_cover_the_space_without_overlap(n in 1u32..2000) {
            let r = split(n);
            prop_assert_eq!(r.len(), n as usize);
            prop_assert_eq!(r[0].0, 0);
            prop_assert_eq!(r.last().unwrap().1, u128::MAX);
            for w in r.windows(2) {
                prop_assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
    }
}
