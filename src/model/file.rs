//! Model files are read, never memory-mapped (issue 13 point 2).
//!
//! Why: a mapped file that another process truncates or rewrites in place
//! kills the reader with SIGBUS, with no log line and no callback. Plain
//! `read` calls can only return fewer bytes or different bytes, and both are
//! caught here: every read of a model file notes the file's identity
//! ([`FileIdentity`]: device, inode, size and modification time; not the
//! change time, which a new hard link or a chmod moves without touching a byte)
//! before the first byte and again after the last, and refuses with
//! MODEL_FILE_CHANGED when the file ended early, grew, or was modified
//! meanwhile. What was read is hashed on the way, so a caller gets bytes and
//! their SHA-256 from one pass (WORKER-4314). Once loaded, the resident copy
//! and its digest are the authority: nothing reads the file again.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Result, WorkerError};

/// Bytes handed to the sink per read: large enough for full disk speed.
const READ_BLOCK: usize = 8 << 20;

/// What identifies one version of a file without reading it. Two stats
/// with equal identities saw the same file, its bytes unmodified in between
/// (every write moves the modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// The identity of the regular file at `path` now.
    pub fn stat(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| {
            WorkerError::model_load(format!("cannot stat model file {} ({e})", path.display()))
        })?;
        Ok(Self::of(&meta))
    }
}

/// A model file read start to end: its identity while read, length and SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFacts {
    pub identity: FileIdentity,
    pub sha256: [u8; 32],
}

/// The refusal for a file that changed while it was read.
pub fn changed(path: &Path, what: &str) -> WorkerError {
    WorkerError::ModelFileChanged {
        message: format!(
            "the model file {} changed while it was being read ({what}); nothing was loaded or \
             changed. Model files must not be modified in place: copy a new version next to the \
             old one and rename it over. Retry once the file is complete",
            path.display()
        ),
    }
}

/// A file streamed start to end by [`read_stable`], still open: sampled
/// bytes may be read again by position before [`StableRead::finish`] checks
/// that nothing changed.
#[must_use = "finish() is what notices a file modified during the read"]
pub struct StableRead {
    path: std::path::PathBuf,
    file: File,
    facts: ReadFacts,
}

impl StableRead {
    /// What was read: identity when opened, SHA-256 of every byte.
    pub fn facts(&self) -> ReadFacts {
        self.facts
    }

    /// Fill `buf` from the file at `offset` (bytes that were streamed).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|_| changed(&self.path, "it ended early"))
    }

    /// The facts of the read, once the file is shown unchanged since it was opened.
    pub fn finish(self) -> Result<ReadFacts> {
        let after = self.file.metadata().map_err(|e| {
            WorkerError::model_load(format!(
                "could not stat model file {}: {e}",
                self.path.display()
            ))
        })?;
        let unchecked = crate::mutants::active(crate::mutants::Mutant::FileChangeUnchecked);
        if FileIdentity::of(&after) != self.facts.identity && !unchecked {
            return Err(changed(&self.path, "it was modified"));
        }
        Ok(self.facts)
    }
}

/// Read the regular file at `path` (at most `max` bytes) with plain reads,
/// giving every block to `sink` in order with the file's stat'ed length, and hash it. Refuses a file that
/// is not regular, is larger than `max`, ends early or grows while it is
/// read; [`StableRead::finish`] then refuses one modified meanwhile.
pub fn read_stable(
    path: &Path,
    max: u64,
    mut sink: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<StableRead> {
    let shown = path.display();
    let io = |e: std::io::Error| {
        WorkerError::model_load(format!("could not read model file {shown}: {e}"))
    };
    let file = File::open(path).map_err(io)?;
    let before = file.metadata().map_err(io)?;
    if !before.is_file() {
        return Err(WorkerError::model_load(format!(
            "model path {shown} is not a regular file"
        )));
    }
    let identity = FileIdentity::of(&before);
    if identity.len > max {
        return Err(WorkerError::model_load(format!(
            "model file {shown} is {} bytes, over the limit of {max} bytes",
            identity.len
        )));
    }
    let mut pause = test_pause::for_path(path);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; READ_BLOCK.min(identity.len as usize + 1)];
    let mut total = 0u64;
    // One byte past the stat'ed length is asked for, so growth is seen.
    let mut reader = (&file).take(identity.len.saturating_add(1));
    loop {
        let n = fill(&mut reader, &mut block).map_err(io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > identity.len {
            return Err(changed(path, "it grew"));
        }
        hasher.update(&block[..n]);
        sink(&block[..n], identity.len)?;
        pause.after(total);
    }
    if total < identity.len {
        return Err(changed(
            path,
            &format!(
                "it ended after {total} of its {} bytes: truncated",
                identity.len
            ),
        ));
    }
    Ok(StableRead {
        path: path.to_path_buf(),
        file,
        facts: ReadFacts {
            identity,
            sha256: hasher.finalize().into(),
        },
    })
}

/// The whole file at `path` (at most `max` bytes) in memory, with its facts.
pub fn read_whole(path: &Path, max: u64) -> Result<(Vec<u8>, ReadFacts)> {
    let mut bytes = Vec::new();
    let read = read_stable(path, max, |b, len| {
        if bytes.is_empty() {
            // One allocation of the stat'ed length (bounded by `max`).
            bytes.reserve_exact(len as usize);
        }
        bytes.extend_from_slice(b);
        Ok(())
    })?;
    Ok((bytes, read.finish()?))
}

/// Fill `buf` from `r` as far as it goes; fewer bytes only at end of file.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Test builds: a read of a named model file stops for a while after its
/// first block, so a scenario can change the file under it
/// (`WORKER_ORCD_READ_PAUSE=<file name>:<ms>`). Release builds never pause.
mod test_pause {
    use std::path::Path;

    pub(super) struct Pause {
        #[cfg(feature = "test-hooks")]
        ms: Option<u64>,
    }

    pub(super) fn for_path(_path: &Path) -> Pause {
        #[cfg(feature = "test-hooks")]
        {
            let ms = crate::env::WORKER_ORCD_READ_PAUSE.get().and_then(|spec| {
                let (name, ms) = spec.rsplit_once(':')?;
                let named = _path
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() == name);
                named.then(|| ms.parse().ok()).flatten()
            });
            Pause { ms }
        }
        #[cfg(not(feature = "test-hooks"))]
        Pause {}
    }

    impl Pause {
        /// Called after each block with the bytes read so far; pauses once.
        pub(super) fn after(&mut self, _total: u64) {
            #[cfg(feature = "test-hooks")]
            if let Some(ms) = self.ms.take() {
                tracing::warn!(
                    human = %format!("Test build: pausing a model file read for {ms} ms after {_total} bytes, as WORKER_ORCD_READ_PAUSE asks."),
                    "model read paused"
                );
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_every_byte_in_order_and_hashes_them() {
        let data: Vec<u8> = (0..(READ_BLOCK + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let (_d, p) = temp_file(&data);
        let mut got = Vec::new();
        let facts = read_stable(&p, u64::MAX, |b, _| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap()
        .finish()
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(facts.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(facts.identity.len, data.len() as u64);
    }

    /// Truncation, growth and an in-place rewrite during the read are each
    /// refused with MODEL_FILE_CHANGED (done from the sink, i.e. mid-read).
    #[test]
    fn a_file_changed_mid_read_is_refused() {
        let data = vec![5u8; READ_BLOCK + 100];
        type Edit = (&'static str, fn(&Path));
        let edits: [Edit; 3] = [
            ("truncated", |p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(10)
                    .unwrap()
            }),
            ("grew", |p| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&[1u8; 64]).unwrap();
            }),
            ("modified", |p| {
                use std::io::{Seek, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.seek(std::io::SeekFrom::Start(0)).unwrap();
                f.write_all(&[9u8; 16]).unwrap();
                // Some file systems keep whole-second times; make the change visible.
                let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
                f.set_modified(t).unwrap();
            }),
        ];
        for (what, edit) in edits {
            let (_d, p) = temp_file(&data);
            let mut first = true;
            let err = read_stable(&p, u64::MAX, |_, _| {
                if std::mem::take(&mut first) {
                    edit(&p);
                }
                Ok(())
            })
            .and_then(StableRead::finish)
            .expect_err(what);
            assert_eq!(err.code(), "MODEL_FILE_CHANGED", "{what}: {err}");
        }
    }

    #[test]
    fn a_file_over_the_limit_or_not_regular_is_refused() {
        let (d, p) = temp_file(&[1u8; 100]);
        let e = read_whole(&p, 99).unwrap_err();
        assert!(e.message().contains("over the limit"), "{e}");
        let e = read_whole(d.path(), u64::MAX).unwrap_err();
        assert_eq!(e.code(), "MODEL_LOAD_FAILED");
    }
}
