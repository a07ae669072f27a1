//! Keep lists: which activations a network keeps, one entry per activation index (the stem,
//! every block, the head; `true` = the ReLU6 stays). The one type for keep lists in memory, in
//! checkpoints, in a search's output and on the command line.

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use thiserror::Error;

/// A keep list. Written `1,0,0,1,…` (see [`KeepList::parse`] for every form it is read from),
/// serialised as an array of 0/1. Derefs to `[bool]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeepList(Vec<bool>);

/// Why a keep list could not be read or does not fit a network.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeepError {
    /// The argument names a file (a path, or a `.json`/`.toml` name) that does not exist.
    #[error("{0} does not exist")]
    Missing(PathBuf),
    /// The path exists but is not a regular file (e.g. a directory).
    #[error("{0} is not a file")]
    NotAFile(PathBuf),
    /// The file could not be read: the path and the I/O error's text.
    #[error("cannot read {path}: {detail}", path = .0.display(), detail = .1)]
    Read(PathBuf, String),
    /// A malformed list or file; the text says what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// `FILE:N`: the search output holds no list keeping N activations.
    #[error("{file} has no keep list keeping {kept} activations", file = .0.display(), kept = .1)]
    NoCount(PathBuf, usize),
    /// The list's length differs from the network's number of activation indices.
    #[error("{len} entries for a network with {expected} activations")]
    Length {
        /// Entries in the list.
        len: usize,
        /// The network's [`num_acts`](crate::network::Network::num_acts).
        expected: usize,
    },
}

impl KeepList {
    /// The list as given.
    pub fn new(keep: Vec<bool>) -> KeepList {
        KeepList(keep)
    }

    /// Keeps all `n` activations.
    pub fn all(n: usize) -> KeepList {
        KeepList(vec![true; n])
    }

    /// From 0/1 entries; anything else is an error naming it.
    pub fn from_bits(bits: &[u64]) -> Result<KeepList, KeepError> {
        bits.iter()
            .map(|&b| match b {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(KeepError::Invalid(format!("{b} is not 0 or 1"))),
            })
            .collect::<Result<_, _>>()
            .map(KeepList)
    }

    /// As 0/1, the form of files and the command line.
    pub fn bits(&self) -> Vec<u8> {
        self.0.iter().map(|&k| u8::from(k)).collect()
    }

    /// How many activations are kept.
    pub fn kept(&self) -> usize {
        self.0.iter().filter(|&&k| k).count()
    }

    /// True when nothing is removed (no block can merge).
    pub fn keeps_all(&self) -> bool {
        self.0.iter().all(|&k| k)
    }

    /// Checks the list addresses exactly `num_acts` activations (a network's
    /// [`num_acts`](crate::network::Network::num_acts)).
    pub fn check_len(&self, num_acts: usize) -> Result<(), KeepError> {
        if self.0.len() == num_acts {
            Ok(())
        } else {
            Err(KeepError::Length {
                len: self.0.len(),
                expected: num_acts,
            })
        }
    }

    /// Reads a keep list from `arg`: comma-separated 0/1 (`1,0,0,1`), or a file holding such a
    /// list, a JSON array of 0/1, a JSON object with a `keep` array (a search's
    /// `search.json`), or TOML with `keep = [...]` (`configs/mbv2-140-*.toml`). `FILE:N`
    /// picks the list keeping N activations from a `search.json`'s `keep_lists`.
    pub fn parse(arg: &str) -> Result<KeepList, KeepError> {
        let path = Path::new(arg);
        if let (file, Some(kept)) = count_suffix(arg)
            && !path.exists()
            && Path::new(file).is_file()
        {
            return search_list(Path::new(file), kept);
        }
        let text = if path.is_file() {
            std::fs::read_to_string(path)
                .map_err(|e| KeepError::Read(path.to_path_buf(), e.to_string()))?
        } else if path.exists() {
            return Err(KeepError::NotAFile(path.to_path_buf()));
        } else {
            // A path that is not there would otherwise be parsed as a list of 0/1.
            let file = count_suffix(arg).0;
            if file.contains(['/', '\\']) || file.ends_with(".json") || file.ends_with(".toml") {
                return Err(KeepError::Missing(file.into()));
            }
            arg.to_string()
        };
        let trimmed = text.trim();
        let bits: Vec<u64> = if arg.ends_with(".toml") {
            let table: toml::Table = toml::from_str(trimmed)
                .map_err(|e| KeepError::Invalid(format!("{arg} is not valid TOML: {e}")))?;
            let list = table
                .get("keep")
                .ok_or_else(|| KeepError::Invalid(format!("{arg} has no `keep = [...]`")))?;
            list.clone()
                .try_into()
                .map_err(|_| KeepError::Invalid(format!("`keep` in {arg} is not a list of 0/1")))?
        } else if trimmed.starts_with('[') || trimmed.starts_with('{') {
            let v: Value = serde_json::from_str(trimmed)
                .map_err(|e| KeepError::Invalid(format!("{arg} is not valid JSON: {e}")))?;
            let list = v.get("keep").unwrap_or(&v);
            serde_json::from_value(list.clone())
                .map_err(|_| KeepError::Invalid(format!("{arg} holds no list of 0/1")))?
        } else {
            trimmed
                .split(',')
                .map(|b| {
                    b.trim().parse::<u64>().map_err(|_| {
                        KeepError::Invalid(format!("`{b}` is not 0 or 1 (expected e.g. 1,0,0,1,…)"))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        KeepList::from_bits(&bits)
    }

    /// The file a [`parse`](KeepList::parse) argument reads, if it names an existing one.
    pub fn source_file(arg: &str) -> Option<PathBuf> {
        [arg, count_suffix(arg).0]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }
}

/// `FILE:N` split into `FILE` and `N`; `(arg, None)` without a numeric suffix.
fn count_suffix(arg: &str) -> (&str, Option<usize>) {
    match arg.rsplit_once(':') {
        Some((file, n)) => match n.parse() {
            Ok(n) => (file, Some(n)),
            Err(_) => (arg, None),
        },
        None => (arg, None),
    }
}

/// The list keeping `kept` activations among a search.json's `keep_lists`.
fn search_list(file: &Path, kept: usize) -> Result<KeepList, KeepError> {
    #[derive(Deserialize)]
    struct Search {
        keep_lists: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        kept: usize,
        keep: KeepList,
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| KeepError::Read(file.to_path_buf(), e.to_string()))?;
    let search: Search = serde_json::from_str(&text).map_err(|e| {
        KeepError::Invalid(format!(
            "{} is not a search's search.json: {e}",
            file.display()
        ))
    })?;
    search
        .keep_lists
        .into_iter()
        .find(|l| l.kept == kept)
        .map(|l| l.keep)
        .ok_or_else(|| KeepError::NoCount(file.to_path_buf(), kept))
}

impl Deref for KeepList {
    type Target = [bool];
    fn deref(&self) -> &[bool] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a KeepList {
    type Item = &'a bool;
    type IntoIter = std::slice::Iter<'a, bool>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<bool>> for KeepList {
    fn from(keep: Vec<bool>) -> KeepList {
        KeepList(keep)
    }
}

impl fmt::Display for KeepList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &k) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}", u8::from(k))?;
        }
        Ok(())
    }
}

impl FromStr for KeepList {
    type Err = KeepError;
    fn from_str(s: &str) -> Result<KeepList, KeepError> {
        KeepList::parse(s)
    }
}

impl Serialize for KeepList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.bits().serialize(s)
    }
}

/// Reads 0/1 entries, and `true`/`false` (checkpoints written before keep lists were 0/1).
impl<'de> Deserialize<'de> for KeepList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeepList, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Bit(u64),
            Bool(bool),
        }
        let entries = Vec::<Entry>::deserialize(d)?;
        entries
            .into_iter()
            .map(|e| match e {
                Entry::Bool(b) => Ok(b),
                Entry::Bit(0) => Ok(false),
                Entry::Bit(1) => Ok(true),
                Entry::Bit(b) => Err(serde::de::Error::custom(format!("{b} is not 0 or 1"))),
            })
            .collect::<Result<_, _>>()
            .map(KeepList)
    }
}

/// Serialises a keep list as `true`/`false` (`#[serde(with = "as_bools")]`): the form of
/// checkpoint metadata, which predates the 0/1 form; reading accepts both.
pub mod as_bools {
    use super::KeepList;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes `[true, false, …]`.
    pub fn serialize<S: Serializer>(keep: &KeepList, s: S) -> Result<S::Ok, S::Error> {
        keep.0.serialize(s)
    }

    /// Reads `true`/`false` or 0/1.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeepList, D::Error> {
        KeepList::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(bits: &[u8]) -> KeepList {
        KeepList(bits.iter().map(|&b| b == 1).collect())
    }

    #[test]
    fn keep_lists_parse_from_text_and_json() {
        assert_eq!(KeepList::parse("1,0, 1").unwrap(), list(&[1, 0, 1]));
        assert_eq!(KeepList::parse("[0,1]").unwrap(), list(&[0, 1]));
        assert_eq!(KeepList::parse(r#"{"keep": [1]}"#).unwrap(), list(&[1]));
        let err = KeepList::parse("1,2").unwrap_err().to_string();
        assert!(err.contains("2 is not 0 or 1"), "{err}");
        let err = KeepList::parse("1,x").unwrap_err().to_string();
        assert!(err.contains("`x` is not 0 or 1"), "{err}");
        let d = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/mbv2-140-D.toml");
        assert_eq!(KeepList::parse(d).unwrap().kept(), 7);
    }

    #[test]
    fn a_keep_file_that_is_not_there_is_called_missing() {
        for (arg, file) in [
            ("runs/x/search.json", "runs/x/search.json"),
            ("runs/x/search.json:5", "runs/x/search.json"),
            ("search.json", "search.json"),
            ("keep.toml", "keep.toml"),
        ] {
            let err = KeepList::parse(arg).unwrap_err();
            assert_eq!(err.to_string(), format!("{file} does not exist"));
        }
        let err = KeepList::parse(env!("CARGO_MANIFEST_DIR")).unwrap_err();
        assert!(err.to_string().ends_with("is not a file"), "{err}");
    }

    #[test]
    fn a_search_file_with_a_count_picks_that_keep_list() {
        let file = std::env::temp_dir().join(format!("ds-keep-{}.json", std::process::id()));
        let search = r#"{"method": "gates", "keep_ratio": 0.67, "keep": [1, 1, 0],
            "keep_lists": [{"kept": 1, "ratio": 0.33, "keep": [0, 1, 0]},
                           {"kept": 2, "ratio": 0.67, "keep": [1, 1, 0]}]}"#;
        std::fs::write(&file, search).unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(KeepList::parse(f).unwrap(), list(&[1, 1, 0]));
        assert_eq!(
            KeepList::parse(&format!("{f}:1")).unwrap(),
            list(&[0, 1, 0])
        );
        let err = KeepList::parse(&format!("{f}:3")).unwrap_err().to_string();
        assert!(err.contains("no keep list keeping 3"), "{err}");
        assert_eq!(KeepList::source_file(&format!("{f}:3")), Some(file.clone()));
        assert_eq!(KeepList::source_file("1,0,1"), None);
        std::fs::write(&file, "[1, 0]").unwrap();
        let err = KeepList::parse(&format!("{f}:1")).unwrap_err().to_string();
        assert!(err.contains("is not a search's search.json"), "{err}");
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn keep_lists_print_and_serialise_as_0_1_and_read_old_bools() {
        let keep = list(&[1, 0, 1]);
        assert_eq!(keep.to_string(), "1,0,1");
        assert_eq!(keep.to_string().parse::<KeepList>().unwrap(), keep);
        assert_eq!(serde_json::to_string(&keep).unwrap(), "[1,0,1]");
        let old: KeepList = serde_json::from_str("[true,false,true]").unwrap();
        assert_eq!(old, keep);
        assert!(serde_json::from_str::<KeepList>("[1,2]").is_err());
        assert_eq!(keep.kept(), 2);
        assert!(!keep.keeps_all() && KeepList::all(3).keeps_all());
        assert_eq!(
            keep.check_len(4).unwrap_err().to_string(),
            "3 entries for a network with 4 activations"
        );
    }
}
