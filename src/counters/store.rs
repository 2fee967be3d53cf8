//! The sled side of the counters: how a series entry is written as a key and a value, writing
//! and removing one entry, and reading every entry back at start-up. The only file of
//! [`crate::counters`] that calls sled.
//!
//! Layout (one sled key per coalesced entry, see the module doc of [`crate::counters`]):
//!
//! ```text
//! key   = u64_be(len(spec)) ++ spec ++ u64_be(len(group)) ++ group ++ time_be(t_first)
//! value = u64_be(count) ++ time_be(t_last)
//! time_be(t) = u64_be((t as u64) ^ (1 << 63))     // order-preserving for negative times too
//! ```
//!
//! The lengths make the series prefix unambiguous whatever bytes the group holds (a parameter
//! value may contain NUL), and no series prefix is a prefix of another, so a series' entries
//! are contiguous in the tree and sorted by `t_first`.

use std::collections::BTreeMap;

use super::{CounterError, SeriesKey};

/// Bytes of a stored value: the entry's count, then its `t_last`.
const VALUE_LEN: usize = 16;

/// One entry as stored: `count` events, the first at `t_first`, the last at `t_last` (unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) t_first: i64,
    pub(super) t_last: i64,
    pub(super) count: u64,
}

/// The counters' sled tree.
pub(super) struct Store {
    tree: sled::Tree,
}

impl Store {
    pub(super) fn new(tree: sled::Tree) -> Store {
        Store { tree }
    }

    /// Writes (or overwrites) the entry of `key` that starts at `t_first`.
    pub(super) fn put(
        &self,
        key: &SeriesKey,
        t_first: i64,
        count: u64,
        t_last: i64,
    ) -> Result<(), CounterError> {
        let value = encode_value(count, t_last);
        self.tree.insert(encode_key(key, t_first), &value[..])?;
        Ok(())
    }

    /// Removes the entry of `key` that starts at `t_first` (absent is fine).
    pub(super) fn remove(&self, key: &SeriesKey, t_first: i64) -> Result<(), CounterError> {
        self.tree.remove(encode_key(key, t_first))?;
        Ok(())
    }

    /// Removes a raw key (a zero-count entry found at load).
    fn remove_raw(&self, key: &[u8]) -> Result<(), CounterError> {
        self.tree.remove(key)?;
        Ok(())
    }

    pub(super) fn flush(&self) -> Result<(), CounterError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Every stored entry, by series, each series' entries in `t_first` order. Entries with a
    /// zero count carry nothing and are removed. A key or value that does not parse is an error
    /// (the tree belongs to the counters; anything else in it means the wrong tree was given).
    pub(super) fn load(&self) -> Result<BTreeMap<SeriesKey, Vec<Stored>>, CounterError> {
        let mut out: BTreeMap<SeriesKey, Vec<Stored>> = BTreeMap::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let (key, t_first) = decode_key(&k).map_err(|why| CounterError::Corrupt {
                key: k.to_vec(),
                why,
            })?;
            let (count, t_last) = decode_value(&v).map_err(|why| CounterError::Corrupt {
                key: k.to_vec(),
                why,
            })?;
            if count == 0 {
                self.remove_raw(&k)?;
                continue;
            }
            out.entry(key).or_default().push(Stored {
                t_first,
                t_last,
                count,
            });
        }
        for entries in out.values_mut() {
            // Already in order (the tree is sorted and times are encoded order-preserving);
            // a sort of sorted input is linear.
            entries.sort_by_key(|e| e.t_first);
        }
        Ok(out)
    }
}

fn time_be(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_be(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

pub(super) fn encode_key(key: &SeriesKey, t_first: i64) -> Vec<u8> {
    let (spec, group) = (key.spec.as_bytes(), key.group.as_bytes());
    let mut out = Vec::with_capacity(8 + spec.len() + 8 + group.len() + 8);
    out.extend_from_slice(&(spec.len() as u64).to_be_bytes());
    out.extend_from_slice(spec);
    out.extend_from_slice(&(group.len() as u64).to_be_bytes());
    out.extend_from_slice(group);
    out.extend_from_slice(&time_be(t_first));
    out
}

fn encode_value(count: u64, t_last: i64) -> [u8; VALUE_LEN] {
    let mut out = [0u8; VALUE_LEN];
    let (c, t) = out.split_at_mut(8);
    c.copy_from_slice(&count.to_be_bytes());
    t.copy_from_slice(&time_be(t_last));
    out
}

/// Takes `N` bytes off the front of `rest`.
fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], &'static str> {
    let (head, tail) = rest.split_first_chunk::<N>().ok_or("truncated")?;
    *rest = tail;
    Ok(*head)
}

/// Takes a length-prefixed UTF-8 string off the front of `rest`.
fn take_str(rest: &mut &[u8]) -> Result<String, &'static str> {
    let len = u64::from_be_bytes(take::<8>(rest)?);
    let len = usize::try_from(len).map_err(|_| "length out of range")?;
    let (s, tail) = rest.split_at_checked(len).ok_or("truncated")?;
    *rest = tail;
    String::from_utf8(s.to_vec()).map_err(|_| "not UTF-8")
}

pub(super) fn decode_key(mut rest: &[u8]) -> Result<(SeriesKey, i64), &'static str> {
    let spec = take_str(&mut rest)?;
    let group = take_str(&mut rest)?;
    let t_first = time_from_be(take::<8>(&mut rest)?);
    if !rest.is_empty() {
        return Err("trailing bytes in key");
    }
    Ok((SeriesKey { spec, group }, t_first))
}

fn decode_value(mut rest: &[u8]) -> Result<(u64, i64), &'static str> {
    if rest.len() != VALUE_LEN {
        return Err("value is not 16 bytes");
    }
    let count = u64::from_be_bytes(take::<8>(&mut rest)?);
    let t_last = time_from_be(take::<8>(&mut rest)?);
    Ok((count, t_last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &str, group: &str) -> SeriesKey {
        SeriesKey {
            spec: spec.into(),
            group: group.into(),
        }
    }

    #[test]
    fn keys_round_trip_whatever_the_group_holds() {
        for (k, t) in [
            (
                key("gmail.users.messages.send|agent", "coder"),
                1_700_000_000_000,
            ),
            (key("a|params.to", "x\0y\u{1F600}"), -5),
            (key("", ""), i64::MIN),
            (key("s", "g"), i64::MAX),
        ] {
            assert_eq!(decode_key(&encode_key(&k, t)), Ok((k.clone(), t)));
        }
    }

    #[test]
    fn time_encoding_preserves_order() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 999, 1_700_000_000_000, i64::MAX];
        let k = key("s", "g");
        for w in times.windows(2) {
            assert!(encode_key(&k, w[0]) < encode_key(&k, w[1]), "{w:?}");
        }
    }

    #[test]
    fn nul_in_group_does_not_collide_with_another_series() {
        // Without length prefixes "a\0b" + "c" and "a" + "b\0c" would share bytes.
        let a = encode_key(&key("a\0b", "c"), 0);
        let b = encode_key(&key("a", "b\0c"), 0);
        assert_ne!(a, b);
        assert_eq!(decode_key(&a).unwrap().0, key("a\0b", "c"));
    }

    #[test]
    fn malformed_keys_and_values_are_refused() {
        let good = encode_key(&key("s", "g"), 7);
        assert!(decode_key(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(decode_key(&long).is_err());
        assert!(decode_key(&[0xff; 8]).is_err());
        assert!(decode_value(&[0; 15]).is_err());
        assert_eq!(decode_value(&encode_value(3, -2)), Ok((3, -2)));
    }

    #[test]
    fn load_reports_a_foreign_record() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("counters").unwrap();
        tree.insert(b"not a counter", &b"x"[..]).unwrap();
        let err = Store::new(tree).load().unwrap_err();
        assert!(matches!(err, CounterError::Corrupt { .. }), "{err}");
    }
}
