//! Timelines: how recovery walks from a base backup to its target across the
//! branches that promotions made. A timeline history file (`00000003.history`)
//! lists a timeline's ancestors and where each was left; recovery reads each
//! segment from the newest timeline of that chain that had begun by the
//! segment's end, as PostgreSQL's `XLogFileReadAnyTLI` does. From that follow
//! the exact segment names a restore needs, so a gap is found before anything
//! is written. No I/O.

use super::wal::{SegmentName, format_lsn, parse_lsn};

/// One line of a history file: `parent` ended at `switch` (where its child
/// began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub at: u64,
}

/// Why a history file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeline {timeline}'s history file: {message}")]
pub struct BadHistory {
    pub timeline: u32,
    pub message: String,
}

/// Reads the history file of `timeline`: its ancestors, oldest first, each
/// with the position where it was left.
///
/// # Errors
/// A line that is not `parent<TAB>LSN<TAB>reason`, or ancestors that are not
/// older timelines in order (the file would send recovery astray).
pub fn parse_history(timeline: u32, text: &str) -> Result<Vec<Switch>, BadHistory> {
    let bad = |message: String| BadHistory { timeline, message };
    let mut out: Vec<Switch> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(bad(format!("'{line}' is not 'timeline LSN reason'")));
        };
        let parent: u32 = parent
            .parse()
            .map_err(|_| bad(format!("'{parent}' is not a timeline")))?;
        let at = parse_lsn(lsn).ok_or_else(|| bad(format!("'{lsn}' is not an LSN")))?;
        if let Some(prev) = out.last() {
            if parent <= prev.parent || at < prev.at {
                return Err(bad(format!(
                    "timeline {parent} at {lsn} does not follow timeline {} at {}",
                    prev.parent,
                    format_lsn(prev.at)
                )));
            }
        }
        if parent == 0 || parent >= timeline {
            return Err(bad(format!(
                "timeline {parent} cannot be an ancestor of timeline {timeline}"
            )));
        }
        out.push(Switch { parent, at });
    }
    Ok(out)
}

/// A timeline of a recovery's path and the WAL positions it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub timeline: u32,
    /// Where it begins (0 for the first timeline of the path).
    pub begins: u64,
    /// Where it was left for its child (`None` for the target timeline).
    pub ends: Option<u64>,
}

/// Why no path leads from a base backup to the target timeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPath {
    #[error(
        "timeline {target} did not branch from timeline {base} (its ancestors: {ancestors}); the base backup cannot recover onto it"
    )]
    NotAnAncestor {
        base: u32,
        target: u32,
        ancestors: String,
    },
    #[error(
        "timeline {target} branched from timeline {base} at {switch}, before the base backup started at {start}; recovery from it cannot reach timeline {target}"
    )]
    BranchedBefore {
        base: u32,
        target: u32,
        switch: String,
        start: String,
    },
}

/// The legs recovery walks from a base backup on `base` (starting at
/// `start`) to `target`, whose history is `history` (empty for a first
/// timeline).
///
/// # Errors
/// `target` did not descend from `base` after `start` ([`NoPath`]).
pub fn path(base: u32, start: u64, target: u32, history: &[Switch]) -> Result<Vec<Leg>, NoPath> {
    if base == target {
        return Ok(vec![Leg {
            timeline: target,
            begins: 0,
            ends: None,
        }]);
    }
    let Some(from) = history.iter().position(|s| s.parent == base) else {
        return Err(NoPath::NotAnAncestor {
            base,
            target,
            ancestors: if history.is_empty() {
                "none".into()
            } else {
                history
                    .iter()
                    .map(|s| s.parent.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    if history[from].at < start {
        return Err(NoPath::BranchedBefore {
            base,
            target,
            switch: format_lsn(history[from].at),
            start: format_lsn(start),
        });
    }
    let mut legs = Vec::new();
    let mut begins = 0;
    for s in &history[from..] {
        legs.push(Leg {
            timeline: s.parent,
            begins,
            ends: Some(s.at),
        });
        begins = s.at;
    }
    legs.push(Leg {
        timeline: target,
        begins,
        ends: None,
    });
    Ok(legs)
}

/// Walks the segments recovery reads from `start` to `end` (inclusive WAL
/// positions) along `legs` as PostgreSQL does: for each segment it tries the
/// timelines of the path newest first, among those that had begun by the
/// segment and are not older than the timeline it read last; `has(name,
/// last)` says whether the archive holds one (`last` for the final segment,
/// which may be the live, still partial one). Returns the segments read, or
/// the first one missing (named on the newest timeline that could hold it).
///
/// # Errors
/// The first segment no timeline of the path holds.
pub fn walk(
    legs: &[Leg],
    (start, end): (u64, u64),
    segment_size: u32,
    mut has: impl FnMut(SegmentName, bool) -> bool,
) -> Result<Vec<SegmentName>, SegmentName> {
    let size = u64::from(segment_size);
    let (first, last) = (start / size, end.max(start) / size);
    let mut current = legs.first().map_or(0, |l| l.timeline);
    let mut read = Vec::new();
    for n in first..=last {
        let mut candidates = legs
            .iter()
            .rev()
            .filter(|l| l.timeline >= current && l.begins / size <= n)
            .map(|l| SegmentName::from_number(l.timeline, n, segment_size));
        let preferred = candidates.clone().next();
        match candidates.find(|name| has(*name, n == last)) {
            Some(name) => {
                current = name.timeline;
                read.push(name);
            }
            None => {
                return Err(
                    preferred.unwrap_or_else(|| SegmentName::from_number(current, n, segment_size))
                );
            }
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u32 = 16 << 20;

    fn lsn(s: &str) -> u64 {
        parse_lsn(s).unwrap()
    }

    #[test]
    fn history_files_as_postgresql_writes_them_parse() {
        let text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-12-01 14:30:00+00\n";
        assert_eq!(
            parse_history(3, text).unwrap(),
            vec![
                Switch {
                    parent: 1,
                    at: lsn("0/3000158")
                },
                Switch {
                    parent: 2,
                    at: lsn("0/5000000")
                }
            ]
        );
        assert_eq!(
            parse_history(2, "# comment\n1\t0/3000158\tx\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn histories_that_would_mislead_recovery_are_refused() {
        for (tl, text) in [
            (3, "1 0/3000158 x\n1 0/4000000 y\n"), // a parent twice
            (3, "1 0/5000000 x\n2 0/3000000 y\n"), // going back in the WAL
            (2, "2 0/3000000 x\n"),                // itself as parent
            (2, "5 0/3000000 x\n"),                // a younger parent
            (2, "1 nonsense x\n"),
            (2, "one 0/1 x\n"),
            (2, "1\n"),
        ] {
            assert!(parse_history(tl, text).is_err(), "{text}");
        }
    }

    #[test]
    fn recovery_reads_each_segment_from_the_newest_timeline_that_had_begun() {
        // Base backup on 1 at 0/2000028; 1 → 2 at 0/3000158 (mid-segment 3);
        // 2 → 3 at 0/5000000 (a segment boundary).
        let history = [
            Switch {
                parent: 1,
                at: lsn("0/3000158"),
            },
            Switch {
                parent: 2,
                at: lsn("0/5000000"),
            },
        ];
        let legs = path(1, lsn("0/2000028"), 3, &history).unwrap();
        let range = (lsn("0/2000028"), lsn("0/6000100"));
        let archive = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            move |s: SegmentName, _last: bool| names.contains(&s.to_string())
        };
        let all = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000020000000000000003",
            "000000020000000000000004",
            "000000020000000000000005",
            "000000030000000000000005",
            "000000030000000000000006",
        ];
        let read: Vec<String> = walk(&legs, range, SEG, archive(&all))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            read,
            [
                "000000010000000000000002",
                // The switch segment is read from the child, which copied it.
                "000000020000000000000003",
                "000000020000000000000004",
                "000000030000000000000005",
                "000000030000000000000006",
            ]
        );
        // Without the child's copy of the switch segment the parent's serves.
        let without: Vec<&str> = all
            .iter()
            .copied()
            .filter(|n| *n != "000000020000000000000003")
            .collect();
        let read = walk(&legs, range, SEG, archive(&without)).unwrap();
        assert_eq!(read[1].to_string(), "000000010000000000000003");
        // But never an older timeline after a newer one was read: timeline 1's
        // segment 4 does not fill timeline 2's gap.
        let gap: Vec<&str> = all
            .iter()
            .copied()
            .filter(|n| *n != "000000020000000000000004")
            .collect();
        assert_eq!(
            walk(&legs, range, SEG, archive(&gap))
                .unwrap_err()
                .to_string(),
            "000000020000000000000004"
        );
    }

    #[test]
    fn one_timeline_needs_no_history() {
        let legs = path(1, 0, 1, &[]).unwrap();
        let read = walk(
            &legs,
            (lsn("0/1000028"), lsn("0/2000100")),
            SEG,
            |s, last| s.seg == 1 || last,
        )
        .unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(
            walk(&legs, (lsn("0/1000028"), lsn("0/3000100")), SEG, |s, _| s
                .seg
                != 2)
            .unwrap_err()
            .to_string(),
            "000000010000000000000002"
        );
    }

    #[test]
    fn a_timeline_that_did_not_descend_from_the_base_backup_is_no_path() {
        let history = [Switch {
            parent: 1,
            at: lsn("0/3000158"),
        }];
        // The branch happened before the base backup began.
        assert!(matches!(
            path(1, lsn("0/4000028"), 2, &history),
            Err(NoPath::BranchedBefore { .. })
        ));
        // Timeline 2 of a base backup on 4 (another branch).
        let e = path(4, 0, 2, &history).unwrap_err();
        assert!(
            e.to_string().contains("did not branch from timeline 4"),
            "{e}"
        );
    }
}
