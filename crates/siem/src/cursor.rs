//! The durable cursor: the sequence number of the last audit entry a sink has accepted, kept in a
//! small file that is replaced atomically so a crash leaves either the old or the new value.
//!
//! A cursor is held by one shipper at a time: [`Cursor::open`] takes an exclusive lock on a
//! `<name>.lock` file beside it and keeps it until the cursor is dropped, so two processes (or two
//! shippers in one process) can never ship from the same cursor and double the stream.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::SiemError;

/// A durable, exclusively held cursor file holding one sequence number (0 when the file is missing).
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    tmp_path: PathBuf,
    dir: PathBuf,
    value: u64,
    /// Held for the lifetime of the cursor; the OS releases the lock when the file is closed.
    _lock: File,
}

impl Cursor {
    /// Opens the cursor at `path`, creating its directory (mode 0700) when missing, and takes the
    /// cursor's lock. A missing cursor file means nothing has been delivered yet (0).
    pub fn open(path: impl AsRef<Path>) -> Result<Cursor, SiemError> {
        let path = path.as_ref().to_path_buf();
        let Some(file_name) = path.file_name().map(|name| name.to_os_string()) else {
            return Err(SiemError::Config(format!(
                "the cursor path {} does not name a file",
                path.display()
            )));
        };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let read_error = |error: io::Error| SiemError::CursorRead {
            path: path.clone(),
            error,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(read_error)?;

        let mut lock_name = file_name.clone();
        lock_name.push(".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(lock_name))
            .map_err(read_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SiemError::CursorLocked { path }),
            Err(TryLockError::Error(error)) => return Err(read_error(error)),
        }

        let value = match fs::read(&path) {
            Ok(bytes) => {
                parse(&bytes).ok_or_else(|| SiemError::CursorCorrupt { path: path.clone() })?
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(read_error(error)),
        };

        let mut tmp_name = file_name;
        tmp_name.push(".tmp");
        Ok(Cursor {
            tmp_path: dir.join(tmp_name),
            path,
            dir,
            value,
            _lock: lock,
        })
    }

    /// The sequence number of the last entry delivered (0 before the first).
    pub fn get(&self) -> u64 {
        self.value
    }

    /// The cursor file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `seq` the durable cursor: writes it to a temporary file in the same directory (mode
    /// 0600), syncs it, renames it over the cursor file and syncs the directory, so that after a
    /// crash the file holds either the old or the new value, never a mix. Moving the cursor back is
    /// refused; moving it to its current value does nothing.
    pub fn advance(&mut self, seq: u64) -> Result<(), SiemError> {
        if seq == self.value {
            return Ok(());
        }
        if seq < self.value {
            return Err(SiemError::CursorBackwards {
                path: self.path.clone(),
                current: self.value,
                requested: seq,
            });
        }
        self.write(seq).map_err(|error| SiemError::CursorWrite {
            path: self.path.clone(),
            error,
        })?;
        self.value = seq;
        Ok(())
    }

    fn write(&self, seq: u64) -> io::Result<()> {
        let mut tmp = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.tmp_path)?;
        // A temporary file left by a crash keeps its old mode: `mode` applies only on creation.
        tmp.set_permissions(fs::Permissions::from_mode(0o600))?;
        tmp.write_all(format!("{seq}\n").as_bytes())?;
        tmp.sync_all()?;
        drop(tmp);
        fs::rename(&self.tmp_path, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }
}

/// Parses the cursor file's content: decimal digits and an optional final newline.
fn parse(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_zero_and_creates_nothing_until_advanced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/syslog.cursor");
        let cursor = Cursor::open(&path).unwrap();
        assert_eq!(cursor.get(), 0);
        assert!(!path.exists());
        let mode = fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn advance_is_durable_private_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.cursor");
        let mut cursor = Cursor::open(&path).unwrap();
        cursor.advance(41).unwrap();
        cursor.advance(42).unwrap();
        assert_eq!(cursor.get(), 42);
        assert_eq!(fs::read_to_string(&path).unwrap(), "42\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("syslog.cursor.tmp").exists());
        drop(cursor);
        assert_eq!(Cursor::open(&path).unwrap().get(), 42);
    }

    #[test]
    fn a_crash_before_the_rename_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.cursor");
        let mut cursor = Cursor::open(&path).unwrap();
        cursor.advance(10).unwrap();
        drop(cursor);
        // What a crash between writing the temporary file and renaming it leaves behind: a torn
        // temporary file, world-readable, and the old cursor untouched.
        let tmp = dir.path().join("syslog.cursor.tmp");
        fs::write(&tmp, b"99").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();

        let mut cursor = Cursor::open(&path).unwrap();
        assert_eq!(cursor.get(), 10);
        cursor.advance(11).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "11\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!tmp.exists());
    }

    #[test]
    fn moving_back_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut cursor = Cursor::open(&path).unwrap();
        cursor.advance(5).unwrap();
        let error = cursor.advance(4).unwrap_err();
        assert!(matches!(
            error,
            SiemError::CursorBackwards {
                current: 5,
                requested: 4,
                ..
            }
        ));
        assert_eq!(cursor.get(), 5);
        assert_eq!(fs::read_to_string(&path).unwrap(), "5\n");
        cursor.advance(5).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        for bad in [
            &b""[..],
            b"12a\n",
            b"-1\n",
            b"99999999999999999999999\n",
            b" 7\n",
        ] {
            fs::write(&path, bad).unwrap();
            let error = Cursor::open(&path).unwrap_err();
            assert!(
                matches!(error, SiemError::CursorCorrupt { .. }),
                "{bad:?}: {error}"
            );
            assert!(error.to_string().contains(&path.display().to_string()));
        }
        fs::write(&path, b"7").unwrap();
        assert_eq!(Cursor::open(&path).unwrap().get(), 7);
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let first = Cursor::open(&path).unwrap();
        let error = Cursor::open(&path).unwrap_err();
        assert!(matches!(error, SiemError::CursorLocked { .. }), "{error}");
        drop(first);
        Cursor::open(&path).unwrap();
    }
}
