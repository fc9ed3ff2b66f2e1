//! Log positions as clients see them: `POS` alone (this process's log, the only form a single Weir uses) or
//! `PROCESS:POS` in a cluster, where each process has its own log and an ingest response names its process.

use std::fmt;
use std::str::FromStr;

/// A position of some process's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// `None`: the log of the process that answers.
    pub process: Option<u32>,
    pub position: u64,
}

impl FromStr for LogPosition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            |e: std::num::ParseIntError| format!("{text:?} is not a log position ({e}); write POS or PROCESS:POS");
        match text.split_once(':') {
            None => Ok(LogPosition { process: None, position: text.parse().map_err(bad)? }),
            Some((p, pos)) => {
                Ok(LogPosition { process: Some(p.parse().map_err(bad)?), position: pos.parse().map_err(bad)? })
            }
        }
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.process {
            None => write!(f, "{}", self.position),
            Some(p) => write!(f, "{p}:{}", self.position),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LogPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_with_or_without_their_process() {
        assert_eq!("42".parse(), Ok(LogPosition { process: None, position: 42 }));
        assert_eq!("2:42".parse(), Ok(LogPosition { process: Some(2), position: 42 }));
        assert_eq!(LogPosition { process: Some(2), position: 42 }.to_string(), "2:42");
        assert!("-1".parse::<LogPosition>().unwrap_err().contains("not a log position"));
        assert!("a:1".parse::<LogPosition>().is_err());
        assert!("99999999999999999999999".parse::<LogPosition>().is_err());
    }
}
