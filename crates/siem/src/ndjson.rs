//! The NDJSON sink: each audit entry's AuditEvent JSON as one line of
//! `auditevents-<first seq, 12 digits>.ndjson` files that a SIEM picks up from a directory.
//!
//! Files are created 0600 in a directory created 0700. A batch is appended, then `fdatasync`ed
//! (and a new file's directory entry synced) before the shipper advances its cursor, so an entry
//! whose cursor moved is on disk. A crash after the write and before the cursor moved makes the
//! next run write that batch again: lines may repeat, none is lost.
//!
//! A crash in the middle of a write can leave a partial last line. When the sink opens it takes
//! the newest file (by the sequence number in its name), cuts it back to its last complete line
//! and appends from there. A SIEM may move or delete files once it has read them; when the current
//! file is gone, the next batch starts a new one. A file rolls over to a new one, named after the first entry it will
//! hold, when the next line would take it past `max_file_bytes`, but only to an entry whose
//! sequence number is above the current file's first: after a crash, resent entries may sort
//! below it, and a name must never be reused.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::{FeedEntry, SiemError};

/// Where and how to write AuditEvent NDJSON files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdjsonConfig {
    /// The directory the files go to (created 0700 when missing).
    pub dir: PathBuf,
    /// Size after which a new file is started; a file exceeds it only when one line alone does.
    pub max_file_bytes: u64,
}

const PREFIX: &str = "auditevents-";
const SUFFIX: &str = ".ndjson";

/// The file name for a file whose first line is entry `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:012}{SUFFIX}")
}

/// The first sequence number in an export file's name, or `None` for any other file.
fn parse_file_name(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() < 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) struct NdjsonSink {
    config: NdjsonConfig,
    current: Option<OpenFile>,
    buffer: Vec<u8>,
    /// The last entry synced to disk and not yet reported by [`NdjsonSink::confirm`].
    synced: Option<u64>,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    first_seq: u64,
    len: u64,
}

impl NdjsonSink {
    /// Checks the configuration and creates the directory; files are opened on first delivery.
    pub(crate) fn new(config: NdjsonConfig) -> Result<Self, SiemError> {
        if config.max_file_bytes == 0 {
            return Err(SiemError::Config(
                "the NDJSON max_file_bytes is 0; give the largest file size in bytes".to_owned(),
            ));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|error| SiemError::Ndjson {
                path: config.dir.clone(),
                error,
            })?;
        Ok(Self {
            config,
            current: None,
            buffer: Vec::new(),
            synced: None,
        })
    }

    /// A name for logs: `NDJSON directory <dir>`.
    pub(crate) fn describe(&self) -> String {
        format!("NDJSON directory {}", self.config.dir.display())
    }

    /// Whether a file is open and healthy (after an error the sink reopens and repairs it).
    pub(crate) fn is_connected(&self) -> bool {
        self.current.is_some()
    }

    /// Appends `batch`, one line per entry, and syncs it to disk. On `Err` the file is closed so
    /// that the next delivery repairs any partial line first.
    pub(crate) fn deliver(&mut self, batch: &[FeedEntry]) -> Result<(), SiemError> {
        let result = self.append(batch);
        match &result {
            Ok(()) => self.synced = batch.last().map(|entry| entry.seq).or(self.synced),
            Err(_) => self.current = None,
        }
        result
    }

    /// The last entry synced since the previous call: a synced line is as delivered as it gets.
    pub(crate) fn confirm(&mut self) -> Option<u64> {
        self.synced.take()
    }

    /// Closes the current file (everything written is already synced).
    pub(crate) fn close(&mut self) {
        self.current = None;
    }

    fn append(&mut self, batch: &[FeedEntry]) -> Result<(), SiemError> {
        if let Some(open) = &self.current
            && !open.still_at_path()
        {
            tracing::info!(file = %open.path.display(), "the NDJSON export file was moved or removed; starting a new one");
            self.current = None;
        }
        if self.current.is_none() {
            self.current = self.resume()?;
        }
        self.buffer.clear();
        for entry in batch {
            let line_len = line_len(&entry.json);
            let roll = match &self.current {
                None => true,
                Some(open) => {
                    let size = open.len + self.buffer.len() as u64;
                    size > 0
                        && size + line_len > self.config.max_file_bytes
                        && entry.seq > open.first_seq
                }
            };
            if roll {
                self.flush_buffer()?;
                self.current = Some(self.create(entry.seq)?);
            }
            crate::feed::push_one_line(&mut self.buffer, &entry.json);
            self.buffer.push(b'\n');
        }
        self.flush_buffer()
    }

    /// Writes the buffered lines to the current file and syncs them.
    fn flush_buffer(&mut self) -> Result<(), SiemError> {
        let Some(open) = &mut self.current else {
            return Ok(());
        };
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = open
            .file
            .write_all(&self.buffer)
            .and_then(|()| open.file.sync_data());
        written.map_err(|error| SiemError::Ndjson {
            path: open.path.clone(),
            error,
        })?;
        open.len += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Opens the newest export file for appending, cutting away a partial last line.
    fn resume(&self) -> Result<Option<OpenFile>, SiemError> {
        let dir_error = |error: io::Error| SiemError::Ndjson {
            path: self.config.dir.clone(),
            error,
        };
        let mut newest: Option<u64> = None;
        for dir_entry in fs::read_dir(&self.config.dir).map_err(dir_error)? {
            let dir_entry = dir_entry.map_err(dir_error)?;
            if let Some(first_seq) = parse_file_name(&dir_entry.file_name()) {
                newest = Some(newest.map_or(first_seq, |seen| seen.max(first_seq)));
            }
        }
        let Some(first_seq) = newest else {
            return Ok(None);
        };
        let path = self.config.dir.join(file_name(first_seq));
        let file_error = |error: io::Error| SiemError::Ndjson {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(file_error)?;
        let len = file.metadata().map_err(file_error)?.len();
        let complete = complete_len(&mut file, len).map_err(file_error)?;
        if complete < len {
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = len - complete,
                "removing a partial last line left by an interrupted write; its entry is written again"
            );
            file.set_len(complete).map_err(file_error)?;
            file.sync_all().map_err(file_error)?;
        }
        Ok(Some(OpenFile {
            file,
            path,
            first_seq,
            len: complete,
        }))
    }

    /// Creates the file for entries from `first_seq` on, and makes its name durable.
    fn create(&self, first_seq: u64) -> Result<OpenFile, SiemError> {
        let path = self.config.dir.join(file_name(first_seq));
        let file_error = |error: io::Error| SiemError::Ndjson {
            path: path.clone(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_error)?;
        File::open(&self.config.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| SiemError::Ndjson {
                path: self.config.dir.clone(),
                error,
            })?;
        Ok(OpenFile {
            file,
            path,
            first_seq,
            len: 0,
        })
    }
}

impl OpenFile {
    /// Whether the path still names the open file (a SIEM may move or delete files it has read;
    /// writing on into an unlinked file would hide entries from it).
    fn still_at_path(&self) -> bool {
        match (fs::metadata(&self.path), self.file.metadata()) {
            (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
            _ => false,
        }
    }
}

/// The length of a line for `json`, newline included.
fn line_len(json: &[u8]) -> u64 {
    json.len() as u64 + 1
}

/// The length of `file` up to and including its last newline (0 when it has none).
fn complete_len(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0_u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        // `end - start` is at most the chunk's length, so it fits in usize.
        let size = usize::try_from(end - start).unwrap_or(chunk.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..size])?;
        if let Some(at) = chunk[..size].iter().rposition(|&byte| byte == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn entry(seq: u64) -> FeedEntry {
        FeedEntry {
            seq,
            msgid: crate::MSGID,
            recorded_ms: 0,
            outcome: 0,
            json: format!(r#"{{"resourceType":"AuditEvent","id":"a-{seq:012}"}}"#).into_bytes(),
        }
    }

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<FeedEntry> {
        seqs.map(entry).collect()
    }

    /// Every line of every export file, files in name order.
    fn lines(dir: &Path) -> Vec<(String, String)> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let text = fs::read_to_string(dir.join(&name)).unwrap();
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{name} ends in a partial line"
            );
            for line in text.lines() {
                out.push((name.clone(), line.to_owned()));
            }
        }
        out
    }

    fn ids(dir: &Path) -> Vec<u64> {
        lines(dir)
            .iter()
            .map(|(_, line)| {
                let at = line.find("\"a-").unwrap() + 3;
                line[at..at + 12].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn entries_become_private_lines_in_a_private_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("export");
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 1 << 20,
        })
        .unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        sink.deliver(&entries(1..=3)).unwrap();
        sink.deliver(&[FeedEntry {
            json: b"{\n\"a\": 1\r\n}".to_vec(),
            ..entry(4)
        }])
        .unwrap();
        let path = dir.join("auditevents-000000000001.ndjson");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"resourceType\":\"AuditEvent\",\"id\":\"a-000000000001\"}\n\
             {\"resourceType\":\"AuditEvent\",\"id\":\"a-000000000002\"}\n\
             {\"resourceType\":\"AuditEvent\",\"id\":\"a-000000000003\"}\n\
             { \"a\": 1  }\n"
        );
    }

    #[test]
    fn files_roll_over_before_passing_the_size_limit() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let line = line_len(&entry(1).json);
        assert_eq!(line, 52);
        // Room for three lines per file, not four.
        let max = 3 * line + 10;
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: max,
        })
        .unwrap();
        sink.deliver(&entries(1..=5)).unwrap();
        sink.deliver(&entries(6..=8)).unwrap();
        drop(sink);
        // A new sink carries on in the newest file.
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: max,
        })
        .unwrap();
        sink.deliver(&entries(9..=10)).unwrap();

        let files: Vec<(String, u64)> = {
            let mut files: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect();
            files.sort();
            files
        };
        assert_eq!(
            files,
            vec![
                ("auditevents-000000000001.ndjson".to_owned(), 3 * line),
                ("auditevents-000000000004.ndjson".to_owned(), 3 * line),
                ("auditevents-000000000007.ndjson".to_owned(), 3 * line),
                ("auditevents-000000000010.ndjson".to_owned(), line),
            ]
        );
        assert_eq!(ids(&dir), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_line_larger_than_the_limit_gets_a_file_of_its_own() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 10,
        })
        .unwrap();
        sink.deliver(&entries(1..=2)).unwrap();
        assert_eq!(
            lines(&dir)
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            vec![
                "auditevents-000000000001.ndjson",
                "auditevents-000000000002.ndjson"
            ]
        );
    }

    #[test]
    fn a_crash_mid_write_is_repaired_and_loses_no_entry() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let config = NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 1 << 20,
        };

        // Batch 1..=3 written and acknowledged (the cursor moved to 3).
        let mut sink = NdjsonSink::new(config.clone()).unwrap();
        sink.deliver(&entries(1..=3)).unwrap();
        let cursor = 3;
        // Batch 4..=6: the process dies part-way through entry 6, before the cursor moves. What is
        // on disk is lines 4 and 5 and the first bytes of line 6.
        let mut torn = Vec::new();
        for e in entries(4..=5) {
            torn.extend_from_slice(&e.json);
            torn.push(b'\n');
        }
        torn.extend_from_slice(&entry(6).json[..20]);
        drop(sink);
        let path = dir.join("auditevents-000000000001.ndjson");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();

        // The next run resends from the cursor: 4..=6 again, then carries on.
        let mut sink = NdjsonSink::new(config).unwrap();
        sink.deliver(&entries(cursor + 1..=6)).unwrap();
        sink.deliver(&entries(7..=8)).unwrap();

        // Every entry is there, the only repeats are the unacknowledged batch, no line is torn.
        assert_eq!(ids(&dir), vec![1, 2, 3, 4, 5, 4, 5, 6, 7, 8]);
        for (_, line) in lines(&dir) {
            assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        }
    }

    #[test]
    fn a_torn_first_line_leaves_an_empty_file_to_append_to() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        fs::write(dir.join(file_name(1)), b"{\"resourceType\":\"Au").unwrap();
        fs::write(dir.join("notes.txt"), b"not an export file").unwrap();
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 1 << 20,
        })
        .unwrap();
        sink.deliver(&entries(1..=2)).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(file_name(1)))
                .unwrap()
                .lines()
                .count(),
            2
        );
        assert_eq!(
            fs::read(dir.join("notes.txt")).unwrap(),
            b"not an export file"
        );
    }

    #[test]
    fn resending_into_a_full_rolled_file_never_reuses_a_name() {
        // A crash after filling file 4 and before the cursor moved past 3: the resend of 4 would
        // roll to a new file 4. It goes on the end of the current file instead.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let line = line_len(&entry(1).json);
        let config = NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 3 * line,
        };
        let mut sink = NdjsonSink::new(config.clone()).unwrap();
        sink.deliver(&entries(1..=3)).unwrap();
        sink.deliver(&entries(4..=6)).unwrap();
        drop(sink);
        let mut sink = NdjsonSink::new(config).unwrap();
        sink.deliver(&entries(4..=7)).unwrap();
        let names: Vec<String> = lines(&dir).into_iter().map(|(name, _)| name).collect();
        let count = |name: &str| names.iter().filter(|n| n.as_str() == name).count();
        assert_eq!(count("auditevents-000000000001.ndjson"), 3);
        assert_eq!(count("auditevents-000000000004.ndjson"), 4);
        assert_eq!(count("auditevents-000000000005.ndjson"), 3);
        assert_eq!(names.len(), 10);
        assert_eq!(ids(&dir), vec![1, 2, 3, 4, 5, 6, 4, 5, 6, 7]);
    }

    #[test]
    fn a_file_taken_away_by_the_siem_is_not_written_into() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("export");
        let taken = root.path().join("taken");
        fs::create_dir(&taken).unwrap();
        let mut sink = NdjsonSink::new(NdjsonConfig {
            dir: dir.clone(),
            max_file_bytes: 1 << 20,
        })
        .unwrap();
        sink.deliver(&entries(1..=2)).unwrap();
        fs::rename(dir.join(file_name(1)), taken.join(file_name(1))).unwrap();
        sink.deliver(&entries(3..=4)).unwrap();
        assert_eq!(ids(&taken), vec![1, 2]);
        assert_eq!(ids(&dir), vec![3, 4]);
        assert!(dir.join(file_name(3)).exists());
    }

    #[test]
    fn a_zero_size_limit_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let Err(error) = NdjsonSink::new(NdjsonConfig {
            dir: root.path().to_path_buf(),
            max_file_bytes: 0,
        }) else {
            panic!("accepted");
        };
        assert!(error.to_string().contains("max_file_bytes"));
    }

    #[test]
    fn export_file_names_are_recognised_exactly() {
        assert_eq!(file_name(42), "auditevents-000000000042.ndjson");
        assert_eq!(
            parse_file_name(OsStr::new("auditevents-000000000042.ndjson")),
            Some(42)
        );
        assert_eq!(
            parse_file_name(OsStr::new("auditevents-1234567890123.ndjson")),
            Some(1_234_567_890_123)
        );
        assert_eq!(parse_file_name(OsStr::new("auditevents-42.ndjson")), None);
        assert_eq!(
            parse_file_name(OsStr::new("auditevents-000000000042.ndjson.tmp")),
            None
        );
        assert_eq!(
            parse_file_name(OsStr::new("other-000000000042.ndjson")),
            None
        );
    }
}
