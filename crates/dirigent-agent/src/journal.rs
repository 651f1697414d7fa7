//! The agent's journal: a local, durable outbox. Every event is written (and synced) here
//! before it is sent, and stays until the server acknowledges it, so a network cut, an
//! orchestrator restart or an agent restart loses no output line and no exit status. The
//! journal also remembers the last command applied, so a resent command is applied once.
//!
//! It also knows the last output line reported of each run not yet ended, so that a run
//! adopted after a restart numbers its output on.
//!
//! The file holds one JSON record per line; once it has grown (past 1 MiB, and to twice its
//! size after the last rewrite) it is rewritten with only what is not acknowledged, so that a
//! chatty robot or a long outage does not keep acknowledged output on disk.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use dirigent_proto::link::AgentEvent;
use serde::{Deserialize, Serialize};

/// Rewrite the file once it is larger than this (and than twice its size after the last
/// rewrite).
const COMPACT_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Event {
        id: u64,
        event: AgentEvent,
    },
    Acked {
        id: u64,
    },
    Applied {
        id: u64,
    },
    /// Kept through a compaction: the last output line of a run not yet ended.
    LastOutput {
        run_id: String,
        seq: u64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    last_event_id: u64,
    unacked: VecDeque<(u64, AgentEvent)>,
    last_applied_command: u64,
    /// The last output line of each run whose end is not journaled.
    last_output: BTreeMap<String, u64>,
    /// The file's size after its last rewrite.
    compacted_bytes: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds. A torn last
    /// line, from a crash in the middle of a write, is ignored.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let error = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let mut last_event_id = 0;
        let mut last_acked = 0;
        let mut last_applied_command = 0;
        let mut unacked = VecDeque::new();
        let mut last_output = BTreeMap::new();
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(error)?;
                    let Ok(record) = serde_json::from_str::<Record>(&line) else {
                        tracing::warn!(path = %path.display(), "skipping an unreadable journal line");
                        continue;
                    };
                    match record {
                        Record::Event { id, event } => {
                            last_event_id = last_event_id.max(id);
                            note_output(&mut last_output, &event);
                            unacked.push_back((id, event));
                        }
                        Record::LastOutput { run_id, seq } => {
                            last_output.insert(run_id, seq);
                        }
                        Record::Acked { id } => last_acked = last_acked.max(id),
                        Record::Applied { id } => {
                            last_applied_command = last_applied_command.max(id)
                        }
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(error(err)),
        }
        unacked.retain(|(id, _)| last_acked < *id);
        // After a compaction only the acknowledgement remembers how far the ids went.
        let last_event_id = last_event_id.max(last_acked);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(error)?;
        let bytes = file.metadata().map_err(error)?.len();
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            bytes,
            last_event_id,
            unacked,
            last_applied_command,
            last_output,
            compacted_bytes: 0,
        };
        journal.compact()?;
        Ok(journal)
    }

    /// Writes an event durably and answers its id.
    pub fn append(&mut self, event: AgentEvent) -> Result<u64, JournalError> {
        let ids = self.append_all(vec![event])?;
        Ok(ids.first().copied().unwrap_or(self.last_event_id))
    }

    /// Writes events durably with one sync (group commit) and answers their ids.
    pub fn append_all(&mut self, events: Vec<AgentEvent>) -> Result<Vec<u64>, JournalError> {
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let id = self.last_event_id + 1;
            let record = Record::Event { id, event };
            self.write(&record, false)?;
            self.last_event_id = id;
            if let Record::Event { event, .. } = record {
                note_output(&mut self.last_output, &event);
                self.unacked.push_back((id, event));
            }
            ids.push(id);
        }
        self.file.sync_data().map_err(|source| JournalError {
            path: self.path.clone(),
            source,
        })?;
        Ok(ids)
    }

    /// The server applied every event up to `id`.
    pub fn ack(&mut self, id: u64) -> Result<(), JournalError> {
        let before = self.unacked.len();
        while self
            .unacked
            .front()
            .is_some_and(|(event_id, _)| *event_id <= id)
        {
            self.unacked.pop_front();
        }
        if before != self.unacked.len() {
            // Losing an ack costs a resend, which the server ignores: no need to sync.
            self.write(&Record::Acked { id }, false)?;
        }
        self.compact()
    }

    /// The events not yet acknowledged, in order.
    pub fn unacked(&self) -> impl Iterator<Item = &(u64, AgentEvent)> {
        self.unacked.iter()
    }

    /// The sequence number of the last output line journaled for a run not yet ended; 0 when
    /// there is none.
    pub fn last_output_seq(&self, run_id: &str) -> u64 {
        self.last_output.get(run_id).copied().unwrap_or(0)
    }

    pub fn last_applied_command(&self) -> u64 {
        self.last_applied_command
    }

    /// Records durably that the command `id` was applied.
    pub fn applied(&mut self, id: u64) -> Result<(), JournalError> {
        self.write(&Record::Applied { id }, true)?;
        self.last_applied_command = id;
        Ok(())
    }

    fn write(&mut self, record: &Record, sync: bool) -> Result<(), JournalError> {
        let error = |source| JournalError {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(record).map_err(|err| error(err.into()))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(error)?;
        if sync {
            self.file.sync_data().map_err(error)?;
        }
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn compact(&mut self) -> Result<(), JournalError> {
        if self.bytes < COMPACT_BYTES.max(2 * self.compacted_bytes) {
            return Ok(());
        }
        let error = |source| JournalError {
            path: self.path.clone(),
            source,
        };
        let fresh = self.path.with_extension("compacting");
        let mut file = File::create(&fresh).map_err(error)?;
        let last_acked = self
            .unacked
            .front()
            .map_or(self.last_event_id, |(id, _)| id - 1);
        let head = [
            Record::Acked { id: last_acked },
            Record::Applied {
                id: self.last_applied_command,
            },
        ];
        let last_output = self
            .last_output
            .iter()
            .map(|(run_id, seq)| Record::LastOutput {
                run_id: run_id.clone(),
                seq: *seq,
            });
        let unacked = self.unacked.iter().map(|(id, event)| Record::Event {
            id: *id,
            event: event.clone(),
        });
        let mut bytes = 0;
        for record in head.into_iter().chain(last_output).chain(unacked) {
            let mut line = serde_json::to_vec(&record).map_err(|err| error(err.into()))?;
            line.push(b'\n');
            file.write_all(&line).map_err(error)?;
            bytes += line.len() as u64;
        }
        file.sync_all().map_err(error)?;
        std::fs::rename(&fresh, &self.path).map_err(error)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(error)?;
        self.bytes = bytes;
        self.compacted_bytes = bytes;
        Ok(())
    }
}

/// Follows the last output line of each run until its end.
fn note_output(last_output: &mut BTreeMap<String, u64>, event: &AgentEvent) {
    match event {
        AgentEvent::Output { run_id, lines } => {
            if let Some(last) = lines.last() {
                let seq = last_output.entry(run_id.clone()).or_default();
                *seq = (*seq).max(last.seq);
            }
        }
        AgentEvent::Exited { run_id, .. } | AgentEvent::StartFailed { run_id, .. } => {
            last_output.remove(run_id);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_acknowledged_prefix_is_compacted_away_while_events_stay_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        let text = "x".repeat(64 * 1024);
        let mut ids = Vec::new();
        for _ in 0..20 {
            let event = AgentEvent::StartFailed {
                run_id: "r".into(),
                reason: text.clone(),
                at: Timestamp::UNIX_EPOCH,
            };
            ids.push(journal.append(event).unwrap());
        }
        assert!(COMPACT_BYTES < std::fs::metadata(&path).unwrap().len());
        journal.ack(ids[14]).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 6 * 65 * 1024, "five events left: {size} bytes");
        drop(journal);
        let mut journal = Journal::open(&path).unwrap();
        let left: Vec<u64> = journal.unacked().map(|(id, _)| *id).collect();
        assert_eq!(
            left,
            ids[15..],
            "the unacknowledged events survive the rewrite"
        );
        assert_eq!(
            journal.append(paused("y")).unwrap(),
            ids[19] + 1,
            "ids go on"
        );
    }

    use jiff::Timestamp;

    use super::*;

    fn paused(run_id: &str) -> AgentEvent {
        AgentEvent::Paused {
            run_id: run_id.to_owned(),
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn unacknowledged_events_and_the_applied_command_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        assert_eq!(journal.append(paused("a")).unwrap(), 1);
        assert_eq!(journal.append(paused("b")).unwrap(), 2);
        assert_eq!(journal.append(paused("c")).unwrap(), 3);
        journal.ack(1).unwrap();
        journal.applied(9).unwrap();
        drop(journal);

        // A crash in the middle of a write leaves a torn line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"event\":{\"id\":4,\"ev").unwrap();
        drop(file);

        let mut journal = Journal::open(&path).unwrap();
        let ids: Vec<u64> = journal.unacked().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(journal.last_applied_command(), 9);
        assert_eq!(journal.append(paused("d")).unwrap(), 4, "ids continue");
        journal.ack(4).unwrap();
        assert_eq!(journal.unacked().count(), 0);
    }

    #[test]
    fn a_fully_acknowledged_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path).unwrap();
        let text = "x".repeat(64 * 1024);
        let output = |run_id: &str, seq| AgentEvent::Output {
            run_id: run_id.into(),
            lines: vec![dirigent_proto::link::OutputLine {
                seq,
                stream: dirigent_proto::run::Stream::Stdout,
                at: Timestamp::UNIX_EPOCH,
                text: "hello".into(),
            }],
        };
        journal.append(output("r", 3)).unwrap();
        let mut last = journal.append(output("live", 7)).unwrap();
        for _ in 0..20 {
            let event = AgentEvent::StartFailed {
                run_id: "r".into(),
                reason: text.clone(),
                at: Timestamp::UNIX_EPOCH,
            };
            last = journal.append(event).unwrap();
        }
        journal.applied(5).unwrap();
        assert!(COMPACT_BYTES < std::fs::metadata(&path).unwrap().len());
        journal.ack(last).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 200, "compacted");
        drop(journal);
        let mut journal = Journal::open(&path).unwrap();
        assert_eq!(journal.last_applied_command(), 5);
        assert_eq!(
            journal.last_output_seq("live"),
            7,
            "a live run's output numbering survives"
        );
        assert_eq!(journal.last_output_seq("r"), 0, "an ended run is forgotten");
        assert_eq!(
            journal.append(paused("x")).unwrap(),
            last + 1,
            "ids never repeat"
        );
    }
}
