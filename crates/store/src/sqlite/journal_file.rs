//! The read journal's file: 4 KiB blocks written in place, one group commit per write.
//!
//! A durable commit through SQLite costs two writes and an `fdatasync`, plus the statements
//! and B-tree work around them; a file whose blocks already exist on disk, opened
//! `O_DIRECT | O_DSYNC`, makes a group durable with one aligned write whose completion is the
//! flush (docs/benchmarks.md "session 9": about half the processor time per commit). So the
//! file is written once to its full length when it is made or grown (writing into allocated but
//! unwritten extents would change the file's metadata on every commit), and then only
//! overwritten.
//!
//! Layout: block 0 is the header (magic, the journal's random id, a checksum). Each group
//! commit is one record starting on a block boundary:
//!
//! ```text
//! "CVRJ" | length u32 | first number u64 | count u32 | count × (len u32, sealed entry) | check [16]
//! ```
//!
//! all little-endian, where `check` is the first 16 bytes of SHA-256 over the journal id and
//! every byte before it. A record whose check fails — a write torn by a crash, a block never
//! written, or the tail of a record since overwritten — is not a record, and scanning resumes
//! at the next block. Records are placed as in a ring: the writer reuses blocks whose record
//! is folded (its last number at or below the fold mark) and grows the file when none are
//! free (a new writer cuts it back once everything in it is folded), so the physical order
//! says nothing; readers order what they find by number. A
//! missing number below a number found is therefore a removed record (or a torn one followed
//! by later commits, which the writer never makes: it only writes after a completed write).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

use crate::error::StoreError;

/// The unit of placement and of every write.
pub(crate) const BLOCK: usize = 4096;
const BLOCK64: u64 = BLOCK as u64;
const FILE_MAGIC: &[u8; 16] = b"carevault-rjnl\x00\x01";
const GROUP_MAGIC: &[u8; 4] = b"CVRJ";
/// Magic, length, first number, count.
const GROUP_HEADER: usize = 4 + 4 + 8 + 4;
const CHECK_LEN: usize = 16;
/// The largest record written or read: far above a group of `MAX_GROUP` entries, and a bound
/// on what a forged length can make a reader allocate.
const MAX_RECORD: usize = 64 << 20;
/// The size a journal is made with, when its limit allows.
const INITIAL_BYTES: u64 = 16 << 20;
/// How much is read at once when scanning.
const SCAN_CHUNK: usize = 4 << 20;

/// The first 16 bytes of SHA-256 over `id` and `bytes`.
fn check(id: &[u8; 16], bytes: &[u8]) -> [u8; CHECK_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(id);
    ctx.update(bytes);
    let d = ctx.finish();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECK_LEN]);
    out
}

fn io_err(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("the audit journal {} {what}: {e}", path.display()))
}

/// Blocks a record of `len` bytes takes.
fn blocks_for(len: usize) -> u64 {
    len.div_ceil(BLOCK) as u64
}

fn header_block(id: &[u8; 16]) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..16].copy_from_slice(FILE_MAGIC);
    h[16..32].copy_from_slice(id);
    let c = check(id, &h[..32]);
    h[32..32 + CHECK_LEN].copy_from_slice(&c);
    h
}

/// Appends zeros to `file` from `from` to `to` bytes and makes them and the new length durable.
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Makes the journal at `path` if there is none: a new file with a fresh `id`, written to its
/// full length and made durable under another name, then linked into place (so a journal is
/// never seen half made, and of two processes making one at once, one wins).
pub(crate) fn create_if_missing(path: &Path, id: [u8; 16], bytes: u64) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let tmp = PathBuf::from(format!(
        "{}.new-{}-{:016x}",
        path.display(),
        std::process::id(),
        // Half the fresh random id: two processes (or threads) making one at once differ.
        u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
    ));
    let made = (|| -> std::io::Result<()> {
        let mut f = File::create_new(&tmp)?;
        f.write_all(&header_block(&id))?;
        zero_fill(&f, BLOCK64, bytes)?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    made.map_err(|e| io_err(path, "could not be made", &e))
}

/// The journal's id, from its header.
pub(crate) fn read_id(path: &Path) -> Result<[u8; 16], StoreError> {
    let file = File::open(path).map_err(|e| io_err(path, "could not be opened", &e))?;
    let mut h = vec![0u8; BLOCK];
    file.read_exact_at(&mut h, 0)
        .map_err(|e| io_err(path, "has no header", &e))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[16..32]);
    if &h[..16] != FILE_MAGIC || h[32..32 + CHECK_LEN] != check(&id, &h[..32]) {
        return Err(StoreError::Integrity(format!(
            "the audit journal {} does not begin with a valid header (altered or damaged); \
             to start with a new journal, move it aside: reads' entries it held that had not \
             yet joined the audit log are then lost",
            path.display()
        )));
    }
    Ok(id)
}

/// A valid record found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// The block it starts at.
    pub block: u64,
    /// The blocks it takes.
    pub blocks: u64,
    /// The number of its first entry.
    pub first: u64,
    /// Its entries as sealed, in order.
    pub sealed: Vec<Vec<u8>>,
}

impl Group {
    /// The number of its last entry.
    pub fn last(&self) -> u64 {
        self.first + self.sealed.len() as u64 - 1
    }
}

/// Parses a record from `bytes` (which start on a block boundary and may run past the
/// record); `None` when they do not hold a valid one.
fn parse(id: &[u8; 16], block: u64, bytes: &[u8]) -> Option<Group> {
    let len = record_len(bytes)?;
    let rec = bytes.get(..len)?;
    let (body, tail) = rec.split_at(len - CHECK_LEN);
    if tail != check(id, body) {
        return None;
    }
    let first = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(body[16..20].try_into().ok()?) as usize;
    // Each entry takes at least its 4-byte length: a larger count is forged.
    if first == 0 || count == 0 || count > (body.len() - GROUP_HEADER) / 4 {
        return None;
    }
    let mut sealed = Vec::with_capacity(count);
    let mut at = GROUP_HEADER;
    for _ in 0..count {
        let n = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        sealed.push(body.get(at..at + n)?.to_vec());
        at += n;
    }
    (at == body.len()).then_some(Group {
        block,
        blocks: blocks_for(len),
        first,
        sealed,
    })
}

/// The length a record header at the start of `bytes` claims, if it is one.
fn record_len(bytes: &[u8]) -> Option<usize> {
    if bytes.get(..4)? != GROUP_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    (GROUP_HEADER + CHECK_LEN..=MAX_RECORD)
        .contains(&len)
        .then_some(len)
}

/// Every valid record in the journal at `path`, in file order.
pub(crate) fn scan(path: &Path, id: &[u8; 16]) -> Result<Vec<Group>, StoreError> {
    let read_err = |e: std::io::Error| io_err(path, "could not be read", &e);
    let file = File::open(path).map_err(|e| io_err(path, "could not be opened", &e))?;
    let size = file.metadata().map_err(read_err)?.len();
    let mut blocks = size / BLOCK64;
    let mut groups = Vec::new();
    let mut chunk = vec![0u8; SCAN_CHUNK];
    // The chunk holds blocks `at .. at + held`.
    let (mut at, mut held) = (0u64, 0u64);
    let mut b = 1u64;
    while b < blocks {
        if b >= at + held {
            at = b;
            held = (blocks - b).min((SCAN_CHUNK / BLOCK) as u64);
            let n = (held * BLOCK64) as usize;
            match file.read_exact_at(&mut chunk[..n], at * BLOCK64) {
                Ok(()) => {}
                // The writer cut the file meanwhile (only folded records go): read on up to
                // its new length.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    blocks = file.metadata().map_err(read_err)?.len() / BLOCK64;
                    held = 0;
                    continue;
                }
                Err(e) => return Err(read_err(e)),
            }
        }
        let offset = ((b - at) * BLOCK64) as usize;
        let here = &chunk[offset..(held * BLOCK64) as usize];
        let Some(len) = record_len(here) else {
            b += 1;
            continue;
        };
        let found = if len <= here.len() {
            parse(id, b, here)
        } else if blocks_for(len) <= blocks - b {
            // A record running past the chunk is read on its own.
            let mut rec = vec![0u8; len];
            match file.read_exact_at(&mut rec, b * BLOCK64) {
                Ok(()) => parse(id, b, &rec),
                // Cut meanwhile: what was there was folded.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => None,
                Err(e) => return Err(read_err(e)),
            }
        } else {
            None
        };
        match found {
            Some(g) => {
                b += g.blocks;
                groups.push(g);
            }
            None => b += 1,
        }
    }
    Ok(groups)
}

/// A buffer whose start is aligned to [`BLOCK`], as `O_DIRECT` requires.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let mut a = Aligned {
            raw: Vec::new(),
            start: 0,
        };
        a.reserve(BLOCK);
        a
    }

    /// Makes room for `len` bytes (keeping nothing).
    fn reserve(&mut self, len: usize) {
        if self.raw.len() >= self.start + len {
            return;
        }
        self.raw = vec![0u8; len + BLOCK];
        self.start = self.raw.as_ptr().align_offset(BLOCK);
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        self.reserve(len);
        &mut self.raw[self.start..self.start + len]
    }
}

/// The one process writing a journal: its file opened for direct durable writes and locked,
/// where each block's record ends, and where the next record goes.
pub(crate) struct Writer {
    path: PathBuf,
    id: [u8; 16],
    file: File,
    /// The file's length in blocks, header included.
    blocks: u64,
    /// The most blocks the file may grow to.
    max_blocks: u64,
    /// Where the next record is placed when it fits there.
    head: u64,
    /// For each block, the last number of the record written there (0: none); a block whose
    /// record is folded may be reused.
    owner: Vec<u64>,
    buf: Aligned,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("blocks", &self.blocks)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Opens `path` for writes that are durable when they return: `O_DIRECT | O_DSYNC`, or only
/// `O_DSYNC` where the file system takes no direct I/O (tmpfs).
fn open_durable(path: &Path) -> std::io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT | libc::O_DSYNC) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(libc::O_DSYNC),
        other => other,
    }
}

impl Writer {
    /// Becomes the journal's writer: locks the file (one writer at a time, across processes)
    /// and finds its records. Returns the writer and the highest number in the file.
    pub(crate) fn open(
        path: &Path,
        id: [u8; 16],
        max_bytes: u64,
    ) -> Result<(Writer, u64), StoreError> {
        let file = open_durable(path).map_err(|e| io_err(path, "could not be opened", &e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Backend(format!(
                    "the audit journal {} is being written by another process",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err(path, "could not be locked", &e));
            }
        }
        let size = file
            .metadata()
            .map_err(|e| io_err(path, "could not be read", &e))?
            .len();
        let blocks = size / BLOCK64;
        let mut owner = vec![0u64; blocks as usize];
        let (mut last, mut head) = (0u64, 1u64);
        for g in scan(path, &id)? {
            for b in g.block..g.block + g.blocks {
                owner[b as usize] = g.last();
            }
            if g.last() > last {
                last = g.last();
                head = g.block + g.blocks;
            }
        }
        let writer = Writer {
            path: path.to_owned(),
            id,
            file,
            blocks,
            max_blocks: (max_bytes / BLOCK64).max(blocks),
            head,
            owner,
            buf: Aligned::new(),
        };
        Ok((writer, last))
    }

    /// Where `n` blocks go now without growing the file: at the head, or back at the start,
    /// when every block there holds nothing or a record folded (at or below `folded`).
    fn free_at(&self, n: u64, folded: u64) -> Option<u64> {
        let free = |at: u64| {
            at + n <= self.blocks
                && self.owner[at as usize..(at + n) as usize]
                    .iter()
                    .all(|&o| o <= folded)
        };
        [self.head, 1].into_iter().find(|&at| free(at))
    }

    /// Whether a record of one block could be written now (placed, or the file grown for it).
    pub(crate) fn has_room(&self, folded: u64) -> bool {
        self.free_at(1, folded).is_some() || self.blocks < self.max_blocks
    }

    /// Grows the file to hold at least `n` more blocks (doubling, within the limit), and
    /// returns where the new blocks start.
    fn grow(&mut self, n: u64) -> Result<Option<u64>, StoreError> {
        let want = (self.blocks * 2).max(self.blocks + n).min(self.max_blocks);
        if want < self.blocks + n {
            return Ok(None);
        }
        zero_fill(
            &self.file_for_growing()?,
            self.blocks * BLOCK64,
            want * BLOCK64,
        )
        .map_err(|e| io_err(&self.path, "could not grow", &e))?;
        let at = self.blocks;
        self.owner.resize(want as usize, 0);
        self.blocks = want;
        Ok(Some(at))
    }

    /// Gives back what growing took once it is no longer needed: when the file is longer than
    /// `bytes` and every record in it is folded (its last number at or below `folded`), cuts
    /// it to `bytes`, durably, and starts placing again at block 1. Returns whether it did.
    ///
    /// A journal grows only while the log falls behind (an outage of the log, a burst); without
    /// this it would keep its largest size, on disk and in every scan, for good. Only the
    /// writer cuts, holding the file's lock, and only blocks of folded records go, so a reader
    /// scanning meanwhile loses nothing it needs ([`scan`] reads up to the length it finds).
    pub(crate) fn shrink_if_folded(&mut self, folded: u64, bytes: u64) -> Result<bool, StoreError> {
        let keep = (bytes / BLOCK64).max(2);
        if self.blocks <= keep || self.owner.iter().any(|&o| o > folded) {
            return Ok(false);
        }
        self.file
            .set_len(keep * BLOCK64)
            .map_err(|e| io_err(&self.path, "could not be shortened", &e))?;
        self.owner.truncate(keep as usize);
        self.blocks = keep;
        self.head = 1;
        self.file
            .sync_all()
            .map_err(|e| io_err(&self.path, "could not be synced after shortening", &e))?;
        Ok(true)
    }

    /// A plain handle for growing: direct I/O needs aligned buffers the zero fill has no use for.
    fn file_for_growing(&self) -> Result<File, StoreError> {
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, "could not be opened", &e))
    }

    /// Writes the record of entries `sealed`, numbered from `first`, and returns once it is
    /// durable. Fails, writing nothing, when no blocks are free (every one holds a record not
    /// yet folded, at or below `folded`) and the file is at its limit.
    pub(crate) fn write(
        &mut self,
        first: u64,
        sealed: &[Vec<u8>],
        folded: u64,
    ) -> Result<(), StoreError> {
        let len = record_len_of(sealed);
        if len > MAX_RECORD {
            return Err(StoreError::Backend(format!(
                "a group of {} audit entries ({len} bytes) is larger than a journal record may be",
                sealed.len()
            )));
        }
        let n = blocks_for(len);
        let last = first + sealed.len() as u64 - 1;
        let at = match self.free_at(n, folded) {
            Some(at) => at,
            None => self.grow(n)?.ok_or_else(|| {
                StoreError::Backend(format!(
                    "the audit journal {} is full: its {} KiB hold reads' entries not yet in the audit log",
                    self.path.display(),
                    (self.max_blocks * BLOCK64) >> 10
                ))
            })?,
        };
        let out = self.buf.get((n * BLOCK64) as usize);
        encode(&self.id, first, sealed, out);
        let written = self
            .file
            .write_at(out, at * BLOCK64)
            .map_err(|e| io_err(&self.path, "could not be written", &e))?;
        if written != out.len() {
            return Err(StoreError::Backend(format!(
                "the audit journal {} took {written} of {} bytes",
                self.path.display(),
                out.len()
            )));
        }
        for o in &mut self.owner[at as usize..(at + n) as usize] {
            *o = last;
        }
        self.head = at + n;
        Ok(())
    }
}

/// The length of the record of entries `sealed`.
fn record_len_of(sealed: &[Vec<u8>]) -> usize {
    GROUP_HEADER + sealed.iter().map(|s| 4 + s.len()).sum::<usize>() + CHECK_LEN
}

/// Writes the record of entries `sealed`, numbered from `first`, into `out` (whole blocks),
/// zeros after it.
fn encode(id: &[u8; 16], first: u64, sealed: &[Vec<u8>], out: &mut [u8]) {
    let len = record_len_of(sealed);
    out[..4].copy_from_slice(GROUP_MAGIC);
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&first.to_le_bytes());
    out[16..20].copy_from_slice(&(sealed.len() as u32).to_le_bytes());
    let mut pos = GROUP_HEADER;
    for s in sealed {
        out[pos..pos + 4].copy_from_slice(&(s.len() as u32).to_le_bytes());
        pos += 4;
        out[pos..pos + s.len()].copy_from_slice(s);
        pos += s.len();
    }
    let c = check(id, &out[..pos]);
    out[pos..pos + CHECK_LEN].copy_from_slice(&c);
    out[pos + CHECK_LEN..].fill(0);
}

/// Overwrites `group`'s blocks with a valid record of its (possibly altered) entries, as
/// someone who knows the format could: for tests of tampering.
#[cfg(test)]
pub(crate) fn rewrite(path: &Path, id: &[u8; 16], group: &Group) {
    let n = blocks_for(record_len_of(&group.sealed));
    assert!(
        n <= group.blocks,
        "the altered record must fit in its blocks"
    );
    let mut out = vec![0u8; (group.blocks * BLOCK64) as usize];
    encode(id, group.first, &group.sealed, &mut out);
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&out, group.block * BLOCK64).unwrap();
    f.sync_all().unwrap();
}

/// Zeros `group`'s blocks, as if it had never been written: for tests.
#[cfg(test)]
pub(crate) fn erase(path: &Path, group: &Group) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(
        &vec![0u8; (group.blocks * BLOCK64) as usize],
        group.block * BLOCK64,
    )
    .unwrap();
    f.sync_all().unwrap();
}

/// The size a new journal is made with under a limit of `max_bytes`.
pub(crate) fn initial_bytes(max_bytes: u64) -> u64 {
    INITIAL_BYTES.min(max_bytes).max(2 * BLOCK64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(max: u64) -> (tempfile::TempDir, PathBuf, [u8; 16]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let id = [7u8; 16];
        create_if_missing(&path, id, initial_bytes(max)).unwrap();
        (dir, path, id)
    }

    fn entries(n: usize, size: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; size]).collect()
    }

    #[test]
    fn records_are_found_in_order_with_their_numbers_and_bytes_and_survive_reopening() {
        let (_d, path, id) = journal(1 << 20);
        assert_eq!(read_id(&path).unwrap(), id);
        let (mut w, last) = Writer::open(&path, id, 1 << 20).unwrap();
        assert_eq!(last, 0);
        w.write(1, &entries(3, 10), 0).unwrap();
        // Larger than a block: takes two.
        w.write(4, &entries(1, 5000), 0).unwrap();
        w.write(5, &entries(2, 1), 0).unwrap();
        let found = scan(&path, &id).unwrap();
        let shape: Vec<(u64, u64, u64, usize)> = found
            .iter()
            .map(|g| (g.block, g.blocks, g.first, g.sealed.len()))
            .collect();
        assert_eq!(shape, vec![(1, 1, 1, 3), (2, 2, 4, 1), (4, 1, 5, 2)]);
        assert_eq!(found[1].sealed[0], vec![0u8; 5000]);
        assert_eq!(found[0].sealed[2], vec![2u8; 10]);
        drop(w);
        // A new writer goes on after the highest number, where it ended.
        let (mut w, last) = Writer::open(&path, id, 1 << 20).unwrap();
        assert_eq!(last, 6);
        w.write(7, &entries(1, 1), 0).unwrap();
        assert_eq!(scan(&path, &id).unwrap().last().unwrap().block, 5);
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_journal() {
        let (_d, path, id) = journal(1 << 20);
        let (w, _) = Writer::open(&path, id, 1 << 20).unwrap();
        let err = Writer::open(&path, id, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("being written by another process"), "{err}");
        drop(w);
        Writer::open(&path, id, 1 << 20).unwrap();
    }

    #[test]
    fn a_torn_or_altered_record_is_not_a_record_and_scanning_goes_on_after_it() {
        let (_d, path, id) = journal(1 << 20);
        let (mut w, _) = Writer::open(&path, id, 1 << 20).unwrap();
        for first in 1..=3 {
            w.write(first, &entries(1, 100), 0).unwrap();
        }
        // One byte of the second record's entry changed, as a torn write or an edit would.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 2 * BLOCK64 + 40).unwrap();
        let firsts: Vec<u64> = scan(&path, &id).unwrap().iter().map(|g| g.first).collect();
        assert_eq!(firsts, vec![1, 3]);
        // A record of another journal (another id) is not one of this journal's.
        assert!(scan(&path, &[8u8; 16]).unwrap().is_empty());
    }

    #[test]
    fn folded_blocks_are_reused_and_the_file_grows_only_when_none_are_free_up_to_its_limit() {
        // Four blocks to start with (the header and three records), eight at most.
        let max = 8 * BLOCK64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let id = [3u8; 16];
        create_if_missing(&path, id, 4 * BLOCK64).unwrap();
        let (mut w, _) = Writer::open(&path, id, max).unwrap();
        for first in 1..=3 {
            w.write(first, &entries(1, 100), 0).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * BLOCK64);
        // 1 and 2 are folded: the fourth record reuses block 1.
        w.write(4, &entries(1, 100), 2).unwrap();
        let blocks: Vec<(u64, u64)> = scan(&path, &id)
            .unwrap()
            .iter()
            .map(|g| (g.block, g.first))
            .collect();
        assert_eq!(blocks, vec![(1, 4), (2, 2), (3, 3)]);
        // Only 2 folded now counts: block 2 is free; then nothing is, and the file doubles.
        w.write(5, &entries(1, 100), 2).unwrap();
        w.write(6, &entries(1, 100), 2).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * BLOCK64);
        w.write(7, &entries(1, 100), 2).unwrap();
        w.write(8, &entries(1, 100), 2).unwrap();
        w.write(9, &entries(1, 100), 2).unwrap();
        assert!(!w.has_room(2));
        let err = w.write(10, &entries(1, 100), 2).unwrap_err().to_string();
        assert!(err.contains("is full"), "{err}");
        // Nothing was written for it, and once entries are folded there is room again.
        assert_eq!(scan(&path, &id).unwrap().len(), 7);
        assert!(w.has_room(5));
        w.write(10, &entries(1, 100), 5).unwrap();
        // It took block 1, whose record (4) was folded; 3, folded too, stays until needed.
        let mut firsts: Vec<u64> = scan(&path, &id).unwrap().iter().map(|g| g.first).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![3, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn a_grown_file_is_cut_back_only_when_every_record_in_it_is_folded() {
        // Two blocks to start with (the header and one record), eight at most.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let id = [5u8; 16];
        create_if_missing(&path, id, 2 * BLOCK64).unwrap();
        let len = || std::fs::metadata(&path).unwrap().len();
        let (mut w, _) = Writer::open(&path, id, 8 * BLOCK64).unwrap();
        for first in 1..=3 {
            w.write(first, &entries(1, 100), 0).unwrap();
        }
        assert_eq!(len(), 4 * BLOCK64, "grown to twice its first size");
        assert!(
            !w.shrink_if_folded(2, 2 * BLOCK64).unwrap(),
            "3 is not folded"
        );
        assert_eq!(len(), 4 * BLOCK64);
        assert!(w.shrink_if_folded(3, 2 * BLOCK64).unwrap());
        assert_eq!(len(), 2 * BLOCK64);
        assert!(
            !w.shrink_if_folded(3, 2 * BLOCK64).unwrap(),
            "already at that size"
        );
        // It goes on at block 1 and grows again when it must.
        w.write(4, &entries(1, 100), 3).unwrap();
        w.write(5, &entries(1, 100), 3).unwrap();
        assert_eq!(len(), 4 * BLOCK64);
        let found: Vec<(u64, u64)> = scan(&path, &id)
            .unwrap()
            .iter()
            .map(|g| (g.block, g.first))
            .collect();
        assert_eq!(found, vec![(1, 4), (2, 5)]);
        drop(w);
        let (_, last) = Writer::open(&path, id, 8 * BLOCK64).unwrap();
        assert_eq!(last, 5);
    }

    #[test]
    fn a_record_with_a_forged_length_or_count_is_not_a_record() {
        let (_d, path, id) = journal(1 << 20);
        let (mut w, _) = Writer::open(&path, id, 1 << 20).unwrap();
        w.write(1, &entries(1, 100), 0).unwrap();
        w.write(2, &entries(1, 100), 0).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        // Record 1 claims 4 GiB; record 2 claims 4 billion entries (its check then fails too,
        // but a reader must not allocate for either before finding out).
        f.write_all_at(&u32::MAX.to_le_bytes(), BLOCK64 + 4)
            .unwrap();
        f.write_all_at(&u32::MAX.to_le_bytes(), 2 * BLOCK64 + 16)
            .unwrap();
        assert!(scan(&path, &id).unwrap().is_empty());
        // A reader of the bytes alone, with a valid check over the forged count, refuses it.
        let mut rec = vec![0u8; BLOCK];
        encode(&id, 9, &entries(1, 10), &mut rec);
        rec[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let len = record_len(&rec).unwrap();
        let c = check(&id, &rec[..len - CHECK_LEN]);
        rec[len - CHECK_LEN..len].copy_from_slice(&c);
        assert_eq!(parse(&id, 1, &rec), None);
    }

    #[test]
    fn a_file_without_the_header_is_refused() {
        let (_d, path, _) = journal(1 << 20);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 3).unwrap();
        let err = read_id(&path).unwrap_err().to_string();
        assert!(err.contains("valid header"), "{err}");
    }
}
