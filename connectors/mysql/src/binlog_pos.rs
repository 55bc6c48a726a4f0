//! Binlog positions as stored in the target's checkpoint.
//!
//! Text form: `FILE:POS` followed, on MariaDB, by ` gtid=D-S-N[,D-S-N...]` (the GTID state:
//! the last GTID of every replication domain), e.g. `binlog.000003:1234 gtid=0-1-42`.
//! `POS` is the byte offset of the next event in `FILE`, so a stream resumed there starts
//! right after the checkpointed transaction. Both parts are kept: the GTID state is what a
//! MariaDB stream resumes from (it survives failover and binlog renames), file:position is
//! what MySQL resumes from and what lag and ordering are computed with.

use std::cmp::Ordering;
use std::fmt;

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl Gtid {
    pub fn parse(text: &str) -> Result<Gtid, String> {
        let mut parts = text.trim().split('-');
        let bad = || format!("{text:?} is not a MariaDB GTID (domain-server-sequence, e.g. 0-1-42)");
        let domain = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let server = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Gtid { domain, server, seq })
    }
}

/// The last GTID of each replication domain, ordered by domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(Vec<Gtid>);

impl GtidState {
    /// Parses `0-1-42,1-2-7` (empty text: the empty state).
    pub fn parse(text: &str) -> Result<GtidState, String> {
        let mut state = GtidState::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid = Gtid::parse(part)?;
            if state.0.iter().any(|g| g.domain == gtid.domain) {
                return Err(format!("GTID state {text:?} names domain {} twice", gtid.domain));
            }
            state.update(gtid);
        }
        Ok(state)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn gtids(&self) -> &[Gtid] {
        &self.0
    }

    /// Records `gtid` as its domain's latest.
    pub fn update(&mut self, gtid: Gtid) {
        match self.0.binary_search_by_key(&gtid.domain, |g| g.domain) {
            Ok(i) => self.0[i] = gtid,
            Err(i) => self.0.insert(i, gtid),
        }
    }

    /// True when `gtid` is at or before this state in its domain (sequence numbers grow
    /// within a domain), i.e. a transaction with it was already applied.
    pub fn covers(&self, gtid: &Gtid) -> bool {
        self.0.iter().any(|g| g.domain == gtid.domain && g.seq >= gtid.seq)
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

/// A position in the source's binlog; see the module docs for the text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    /// MariaDB GTID state at this position; `None` on MySQL (and on MariaDB before any
    /// GTID was logged).
    pub gtid: Option<GtidState>,
}

impl BinlogPosition {
    pub fn new(file: impl Into<String>, pos: u64, gtid: Option<GtidState>) -> Self {
        BinlogPosition { file: file.into(), pos, gtid: gtid.filter(|g| !g.is_empty()) }
    }

    /// Parses the checkpoint text; the error names what is wrong.
    pub fn parse(text: &str) -> Result<BinlogPosition, String> {
        let text = text.trim();
        let mut words = text.split_whitespace();
        let file_pos = words.next().ok_or_else(|| "empty binlog position".to_string())?;
        let (file, pos) = file_pos
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not a binlog position (FILE:POS [gtid=D-S-N,...])"))?;
        if file.is_empty() {
            return Err(format!("{text:?}: the binlog file name is empty"));
        }
        let pos: u64 = pos.parse().map_err(|_| format!("{text:?}: {pos:?} is not a binlog offset"))?;
        let mut gtid = None;
        for word in words {
            match word.split_once('=') {
                Some(("gtid", state)) => gtid = Some(GtidState::parse(state).map_err(|e| format!("{text:?}: {e}"))?),
                _ => return Err(format!("{text:?}: unexpected {word:?} (expected gtid=D-S-N,...)")),
            }
        }
        Ok(BinlogPosition::new(file, pos, gtid))
    }

    /// `file:pos` without the GTID state (the form lag figures are shown in).
    pub fn file_pos(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }

    /// Orders by file sequence number, then offset (GTIDs are not compared).
    pub fn cmp_file_pos(&self, other: &BinlogPosition) -> Ordering {
        compare_files(&self.file, &other.file).then(self.pos.cmp(&other.pos))
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if let Some(g) = self.gtid.as_ref().filter(|g| !g.is_empty()) {
            write!(f, " gtid={g}")?;
        }
        Ok(())
    }
}

/// The numeric extension of a binlog file name (`binlog.000042` → 42).
pub fn file_sequence(file: &str) -> Option<u64> {
    file.rsplit_once('.').and_then(|(_, ext)| ext.parse().ok())
}

/// Compares binlog file names by their sequence numbers (names are compared as text when
/// either has none).
pub fn compare_files(a: &str, b: &str) -> Ordering {
    match (file_sequence(a), file_sequence(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Bytes between `from` and the end of the binlog listed in `logs` (`SHOW BINARY LOGS`:
/// every file with its size, oldest first): the rest of `from`'s file plus every later
/// file. Zero when `from` is at or past the head.
pub fn bytes_behind(from: &BinlogPosition, logs: &[(String, u64)]) -> u64 {
    logs.iter()
        .map(|(file, size)| match compare_files(file, &from.file) {
            Ordering::Less => 0,
            Ordering::Equal => size.saturating_sub(from.pos),
            Ordering::Greater => *size,
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        for text in
            ["binlog.000003:1234", "binlog.000003:1234 gtid=0-1-42", "mysql-bin.000010:4 gtid=0-1-42,1-2-7,5-9-1"]
        {
            let p = BinlogPosition::parse(text).unwrap();
            assert_eq!(p.to_string(), text);
        }
        let p = BinlogPosition::parse("binlog.000003:1234 gtid=1-2-7,0-1-42").unwrap();
        assert_eq!(p.file, "binlog.000003");
        assert_eq!(p.pos, 1234);
        assert_eq!(p.to_string(), "binlog.000003:1234 gtid=0-1-42,1-2-7", "domains are ordered");
        // An empty state is no state.
        assert_eq!(BinlogPosition::parse("b.000001:4 gtid=").unwrap().gtid, None);
        assert_eq!(BinlogPosition::parse("b.000001:4 gtid=").unwrap().to_string(), "b.000001:4");
    }

    #[test]
    fn bad_positions_say_why() {
        assert!(BinlogPosition::parse("").is_err());
        assert!(BinlogPosition::parse("0/1A2B3C4").unwrap_err().contains("not a binlog position"));
        assert!(BinlogPosition::parse("b.000001:x").unwrap_err().contains("offset"));
        assert!(BinlogPosition::parse(":4").is_err());
        assert!(BinlogPosition::parse("b.000001:4 gtid=0-1").unwrap_err().contains("GTID"));
        assert!(BinlogPosition::parse("b.000001:4 gtid=0-1-2,0-1-3").unwrap_err().contains("twice"));
        assert!(BinlogPosition::parse("b.000001:4 foo=1").is_err());
        assert!(Gtid::parse("0-1-2-3").is_err());
        assert!(Gtid::parse("-1-2").is_err());
    }

    #[test]
    fn gtid_state_tracks_each_domain() {
        let mut s = GtidState::parse("0-1-10").unwrap();
        assert!(s.covers(&Gtid { domain: 0, server: 1, seq: 10 }));
        assert!(s.covers(&Gtid { domain: 0, server: 2, seq: 3 }));
        assert!(!s.covers(&Gtid { domain: 0, server: 1, seq: 11 }));
        assert!(!s.covers(&Gtid { domain: 1, server: 1, seq: 1 }), "unknown domain: not applied yet");
        s.update(Gtid { domain: 1, server: 3, seq: 5 });
        s.update(Gtid { domain: 0, server: 1, seq: 11 });
        assert_eq!(s.to_string(), "0-1-11,1-3-5");
        assert_eq!(GtidState::parse("").unwrap(), GtidState::default());
        assert_eq!(GtidState::parse(" 0-1-2 , 3-4-5 ").unwrap().to_string(), "0-1-2,3-4-5");
    }

    #[test]
    fn files_compare_by_sequence() {
        let a = BinlogPosition::parse("binlog.000009:900").unwrap();
        let b = BinlogPosition::parse("binlog.000010:4").unwrap();
        assert_eq!(a.cmp_file_pos(&b), Ordering::Less);
        assert_eq!(b.cmp_file_pos(&a), Ordering::Greater);
        assert_eq!(a.cmp_file_pos(&a.clone()), Ordering::Equal);
        assert_eq!(file_sequence("binlog.000042"), Some(42));
        assert_eq!(file_sequence("binlog"), None);
    }

    #[test]
    fn lag_sums_sizes_across_files() {
        let logs = vec![("b.000001".to_string(), 1000), ("b.000002".to_string(), 500), ("b.000003".to_string(), 300)];
        let at = |f: &str, p| BinlogPosition::new(f, p, None);
        assert_eq!(bytes_behind(&at("b.000003", 300), &logs), 0);
        assert_eq!(bytes_behind(&at("b.000003", 100), &logs), 200);
        assert_eq!(bytes_behind(&at("b.000002", 400), &logs), 100 + 300);
        assert_eq!(bytes_behind(&at("b.000001", 0), &logs), 1800);
        assert_eq!(bytes_behind(&at("b.000004", 4), &logs), 0);
    }
}
