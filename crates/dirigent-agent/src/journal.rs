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
//!
//! What is not acknowledged is bounded: past its cap the journal says it is full
//! ([`Journal::full`]), and the runs stop reading their robots' output until acknowledgements
//! bring it back under — the robots then wait on their writes instead of the journal growing.
//!
//! A write that fails (the disk full, say) is undone (the file cut back to where it was, so no
//! torn line is left for the next to run into); the events wait in memory, the journal says
//! it is full meanwhile, and every later append — [`Journal::append_all`], also with nothing
//! new — writes them first, in order. Nothing is sent before it is written.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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

/// An event as [`Record::Event`] writes it, borrowed.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum EventRecord<'a> {
    Event { id: u64, event: &'a AgentEvent },
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

pub struct Journal {
    path: PathBuf,
    /// Written on blocking threads (see [`Journal::write_out`]).
    file: Arc<Mutex<File>>,
    bytes: u64,
    last_event_id: u64,
    unacked: VecDeque<(u64, AgentEvent)>,
    last_applied_command: u64,
    /// The last output line of each run whose end is not journaled.
    last_output: BTreeMap<String, u64>,
    /// The file's size after its last rewrite.
    compacted_bytes: u64,
    /// The size of each unacknowledged event's line, in order, and their sum.
    unacked_sizes: VecDeque<u64>,
    unacked_bytes: u64,
    /// How many unacknowledged bytes make the journal full.
    cap: u64,
    full: tokio::sync::watch::Sender<bool>,
    /// Events not written yet, because writing failed: written first by the next append.
    waiting: Vec<AgentEvent>,
    /// Whether the last append failed (to say so once).
    failing: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds. A torn last
    /// line, from a crash in the middle of a write, is ignored.
    pub fn open(path: &Path, cap: u64) -> Result<Journal, JournalError> {
        let error = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let mut last_event_id = 0;
        let mut last_acked = 0;
        let mut last_applied_command = 0;
        let mut unacked = VecDeque::new();
        let mut sizes = VecDeque::new();
        let mut last_output = BTreeMap::new();
        // The end of the last whole line: a torn line after it (a crash in the middle of a
        // write) is cut off, so that the next write starts a line of its own.
        let mut whole = 0;
        match File::open(path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    let read = reader.read_until(b'\n', &mut raw).map_err(error)?;
                    if read == 0 || raw.last() != Some(&b'\n') {
                        break;
                    }
                    whole += read as u64;
                    let line = String::from_utf8_lossy(&raw[..read - 1]);
                    let Ok(record) = serde_json::from_str::<Record>(&line) else {
                        tracing::warn!(path = %path.display(), "skipping an unreadable journal line");
                        continue;
                    };
                    match record {
                        Record::Event { id, event } => {
                            last_event_id = last_event_id.max(id);
                            note_output(&mut last_output, &event);
                            unacked.push_back((id, event));
                            sizes.push_back(line.len() as u64 + 1);
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
        while unacked.front().is_some_and(|(id, _)| *id <= last_acked) {
            unacked.pop_front();
            sizes.pop_front();
        }
        // After a compaction only the acknowledgement remembers how far the ids went.
        let last_event_id = last_event_id.max(last_acked);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(error)?;
        if whole < file.metadata().map_err(error)?.len() {
            tracing::warn!(path = %path.display(), "cutting off a torn last journal line");
            file.set_len(whole).map_err(error)?;
        }
        let bytes = whole;
        let journal = Journal {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
            bytes,
            last_event_id,
            unacked,
            last_applied_command,
            last_output,
            compacted_bytes: 0,
            unacked_bytes: sizes.iter().sum(),
            unacked_sizes: sizes,
            cap,
            full: tokio::sync::watch::Sender::new(false),
            waiting: Vec::new(),
            failing: false,
        };

        journal.note_fullness();
        Ok(journal)
    }

    /// Writes an event durably and answers its id; `None` when it waits (writing failed).
    pub async fn append(&mut self, event: AgentEvent) -> Option<u64> {
        self.append_all(vec![event])
            .await
            .first()
            .map(|(id, _)| *id)
    }

    /// Writes events durably with one sync (group commit) — after those waiting from a write
    /// that failed — and answers what is now written, with ids. When writing fails, nothing
    /// is written and everything waits for the next append.
    pub async fn append_all(&mut self, events: Vec<AgentEvent>) -> Vec<(u64, AgentEvent)> {
        self.waiting.extend(events);
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let mut buffer = Vec::new();
        let mut sizes = Vec::with_capacity(self.waiting.len());
        for (n, event) in (1..).zip(&self.waiting) {
            let before = buffer.len();
            let record = EventRecord::Event {
                id: self.last_event_id + n,
                event,
            };
            if serde_json::to_writer(&mut buffer, &record).is_err() {
                buffer.truncate(before);
                continue;
            }
            buffer.push(b'\n');
            sizes.push((buffer.len() - before) as u64);
        }
        if let Err(err) = self.write_out(buffer, true).await {
            if !std::mem::replace(&mut self.failing, true) {
                tracing::warn!(
                    %err,
                    waiting = self.waiting.len(),
                    "cannot write the journal: events wait in memory, robots' output is not read"
                );
            }
            self.note_fullness();
            return Vec::new();
        }
        if std::mem::replace(&mut self.failing, false) {
            tracing::info!(path = %self.path.display(), "the journal can be written again");
        }
        let mut journaled = Vec::with_capacity(sizes.len());
        for (event, size) in std::mem::take(&mut self.waiting).into_iter().zip(sizes) {
            self.last_event_id += 1;
            note_output(&mut self.last_output, &event);
            self.unacked.push_back((self.last_event_id, event.clone()));
            self.unacked_sizes.push_back(size);
            self.unacked_bytes += size;
            journaled.push((self.last_event_id, event));
        }
        self.note_fullness();
        journaled
    }

    /// Whether events wait to be written (a write failed).
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The server applied every event up to `id`.
    pub async fn ack(&mut self, id: u64) {
        let before = self.unacked.len();
        while self
            .unacked
            .front()
            .is_some_and(|(event_id, _)| *event_id <= id)
        {
            self.unacked.pop_front();
            self.unacked_bytes -= self.unacked_sizes.pop_front().unwrap_or(0);
        }
        self.note_fullness();
        if before != self.unacked.len() {
            // Losing an ack costs a resend, which the server ignores: no need to sync, nor
            // to fail when it cannot be written.
            let _ = self.write(&Record::Acked { id }, false).await;
        }
        if let Err(err) = self.compact().await {
            tracing::warn!(%err, "cannot compact the journal: trying again once it has grown");
            self.compacted_bytes = self.bytes;
        }
    }

    /// Whether the unacknowledged events are past the cap, now and as it changes.
    pub fn full(&self) -> tokio::sync::watch::Receiver<bool> {
        self.full.subscribe()
    }

    /// The size of what is not acknowledged.
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    fn note_fullness(&self) {
        let full = self.cap < self.unacked_bytes || !self.waiting.is_empty();
        self.full
            .send_if_modified(|was| std::mem::replace(was, full) != full);
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
    pub async fn applied(&mut self, id: u64) -> Result<(), JournalError> {
        self.write(&Record::Applied { id }, true).await?;
        self.last_applied_command = id;
        Ok(())
    }

    /// Appends one record; answers the size of its line.
    async fn write(&mut self, record: &Record, sync: bool) -> Result<u64, JournalError> {
        let mut line = serde_json::to_vec(record).map_err(|err| self.error(err.into()))?;
        line.push(b'\n');
        let length = line.len() as u64;
        self.write_out(line, sync).await?;
        Ok(length)
    }

    /// Appends `bytes` (synced when `sync`) on a blocking thread, so that a slow disk stalls no
    /// other task. A write that fails is undone — the file cut back to where it was — so that
    /// no torn line is left for the next write to run into.
    async fn write_out(&mut self, bytes: Vec<u8>, sync: bool) -> Result<(), JournalError> {
        let file = Arc::clone(&self.file);
        let end = self.bytes;
        let length = bytes.len() as u64;
        blocking(move || {
            let mut file = crate::lock(&file);
            let written = file.write_all(&bytes).and_then(|()| match sync {
                true => file.sync_data(),
                false => Ok(()),
            });
            if written.is_err() {
                let _ = file.set_len(end);
            }
            written
        })
        .await
        .map_err(|err| self.error(err))?;
        self.bytes += length;
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    /// Rewrites the file with only what is not acknowledged, once it has grown enough; the
    /// writing, syncing and renaming on a blocking thread.
    async fn compact(&mut self) -> Result<(), JournalError> {
        if self.bytes < COMPACT_BYTES.max(2 * self.compacted_bytes) {
            return Ok(());
        }
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
        let mut kept = Vec::new();
        for record in head.into_iter().chain(last_output) {
            serde_json::to_writer(&mut kept, &record).map_err(|err| self.error(err.into()))?;
            kept.push(b'\n');
        }
        for (id, event) in &self.unacked {
            let record = EventRecord::Event { id: *id, event };
            serde_json::to_writer(&mut kept, &record).map_err(|err| self.error(err.into()))?;
            kept.push(b'\n');
        }
        let bytes = kept.len() as u64;
        let path = self.path.clone();
        let file = Arc::clone(&self.file);
        blocking(move || {
            let fresh = path.with_extension("compacting");
            let written = File::create(&fresh).and_then(|mut new| {
                new.write_all(&kept)?;
                new.sync_all()
            });
            if let Err(err) = written {
                let _ = std::fs::remove_file(&fresh);
                return Err(err);
            }
            let mut file = crate::lock(&file);
            std::fs::rename(&fresh, &path)?;
            *file = OpenOptions::new().append(true).open(&path)?;
            Ok(())
        })
        .await
        .map_err(|err| self.error(err))?;
        self.bytes = bytes;
        self.compacted_bytes = bytes;
        Ok(())
    }
}

/// Runs file work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
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
    #[tokio::test]
    async fn the_acknowledged_prefix_is_compacted_away_while_events_stay_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        let text = "x".repeat(64 * 1024);
        let mut ids = Vec::new();
        for _ in 0..20 {
            let event = AgentEvent::StartFailed {
                run_id: "r".into(),
                reason: text.clone(),
                at: Timestamp::UNIX_EPOCH,
            };
            ids.push(journal.append(event).await.unwrap());
        }
        assert!(COMPACT_BYTES < std::fs::metadata(&path).unwrap().len());
        journal.ack(ids[14]).await;
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 6 * 65 * 1024, "five events left: {size} bytes");
        drop(journal);
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        let left: Vec<u64> = journal.unacked().map(|(id, _)| *id).collect();
        assert_eq!(
            left,
            ids[15..],
            "the unacknowledged events survive the rewrite"
        );
        assert_eq!(
            journal.append(paused("y")).await.unwrap(),
            ids[19] + 1,
            "ids go on"
        );
    }

    use jiff::Timestamp;

    use super::*;

    #[tokio::test]
    async fn past_its_cap_the_journal_is_full_until_acknowledgements_bring_it_under() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path, 300).unwrap();
        let full = journal.full();
        let first = journal.append(paused("a")).await.unwrap();
        assert!(!*full.borrow());
        let mut last = first;
        while journal.unacked_bytes() <= 300 {
            last = journal.append(paused("b")).await.unwrap();
        }
        assert!(*full.borrow(), "{} bytes", journal.unacked_bytes());
        journal.ack(last - 1).await;
        assert!(!*full.borrow(), "{} bytes", journal.unacked_bytes());
        // What it holds is counted again after a restart.
        drop(journal);
        let journal = Journal::open(&path, 10).unwrap();
        assert!(*journal.full().borrow());
        assert_eq!(journal.unacked().count(), 1);
    }

    fn paused(run_id: &str) -> AgentEvent {
        AgentEvent::Paused {
            run_id: run_id.to_owned(),
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn unacknowledged_events_and_the_applied_command_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        assert_eq!(journal.append(paused("a")).await.unwrap(), 1);
        assert_eq!(journal.append(paused("b")).await.unwrap(), 2);
        assert_eq!(journal.append(paused("c")).await.unwrap(), 3);
        journal.ack(1).await;
        journal.applied(9).await.unwrap();
        drop(journal);

        // A crash in the middle of a write leaves a torn line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"event\":{\"id\":4,\"ev").unwrap();
        drop(file);

        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        let ids: Vec<u64> = journal.unacked().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(journal.last_applied_command(), 9);
        assert_eq!(
            journal.append(paused("d")).await.unwrap(),
            4,
            "ids continue"
        );
        drop(journal);
        // The torn line was cut off: what came after it is whole.
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        let ids: Vec<u64> = journal.unacked().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 3, 4]);
        journal.ack(4).await;
        assert_eq!(journal.unacked().count(), 0);
    }

    #[tokio::test]
    async fn events_wait_in_memory_while_the_disk_is_full_and_are_written_in_order_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        let full = journal.full();
        assert_eq!(journal.append(paused("a")).await, Some(1));
        let size = std::fs::metadata(&path).unwrap().len();
        // Every write fails as on a full disk (ENOSPC).
        let real = std::mem::replace(
            &mut *crate::lock(&journal.file),
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        assert_eq!(journal.append(paused("b")).await, None);
        assert!(journal.append_all(vec![paused("c")]).await.is_empty());
        assert!(journal.has_waiting());
        assert!(
            *full.borrow(),
            "full while events wait: the robots' output is not read"
        );
        assert_eq!(journal.unacked().count(), 1, "nothing unwritten is sent");
        // An ack that cannot be written is no failure.
        journal.ack(1).await;
        // Space again: what waited is written first, then what comes.
        *crate::lock(&journal.file) = real;
        let written: Vec<u64> = journal
            .append_all(vec![paused("d")])
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(written, [2, 3, 4]);
        assert!(!journal.has_waiting());
        assert!(!*full.borrow());
        drop(journal);
        let journal = Journal::open(&path, u64::MAX).unwrap();
        let runs: Vec<String> = journal
            .unacked()
            .map(|(_, event)| match event {
                AgentEvent::Paused { run_id, .. } => run_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // The ack that could not be written costs a resend of `a`, which the server ignores.
        assert_eq!(runs, ["a", "b", "c", "d"], "in order, each once");
        assert!(size < std::fs::metadata(&path).unwrap().len());
    }

    #[tokio::test]
    async fn a_fully_acknowledged_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
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
        journal.append(output("r", 3)).await.unwrap();
        let mut last = journal.append(output("live", 7)).await.unwrap();
        for _ in 0..20 {
            let event = AgentEvent::StartFailed {
                run_id: "r".into(),
                reason: text.clone(),
                at: Timestamp::UNIX_EPOCH,
            };
            last = journal.append(event).await.unwrap();
        }
        journal.applied(5).await.unwrap();
        assert!(COMPACT_BYTES < std::fs::metadata(&path).unwrap().len());
        journal.ack(last).await;
        assert!(std::fs::metadata(&path).unwrap().len() < 200, "compacted");
        drop(journal);
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        assert_eq!(journal.last_applied_command(), 5);
        assert_eq!(
            journal.last_output_seq("live"),
            7,
            "a live run's output numbering survives"
        );
        assert_eq!(journal.last_output_seq("r"), 0, "an ended run is forgotten");
        assert_eq!(
            journal.append(paused("x")).await.unwrap(),
            last + 1,
            "ids never repeat"
        );
    }
}
