//! The redb database behind [`super::RedbMeta`], reopened after an I/O error.
//!
//! redb fails every later operation once one read or write of its file failed ("Previous I/O
//! error occurred. Please close and re-open the database."). One `ENOSPC` in a commit on a full
//! disk would then refuse every write until berth restarts. So a transaction that fails with an
//! I/O error marks the handle broken, and the next use closes the database and opens it again
//! (redb recovers its last commit). So reads go on while the disk is full, each write that does
//! not fit fails alone, and the first write after space is freed succeeds. Should the reopen
//! itself fail, it is tried again at most every [`REOPEN_EVERY`], and until then callers get
//! the error that broke the database.
//!
//! Every transaction runs inside one call here, holding the lock shared; a reopen holds it
//! exclusively, so it never closes the database under a live transaction.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase};

use super::{Error, Result, is_full};

/// How often a broken database is tried again while reopening it fails.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// A redb error as a store error. Failures of the file itself keep their `io::Error`, so a full
/// disk stays recognisable and [`Handle`] knows to reopen.
pub(super) fn db_err(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Io(e) => io_failure(e),
        e @ (redb::Error::PreviousIo | redb::Error::DatabaseClosed) => Error::MetaIo(io::Error::other(e.to_string())),
        redb::Error::DatabaseAlreadyOpen => Error::Locked,
        e => Error::Meta(e.to_string()),
    }
}

fn io_failure(e: io::Error) -> Error {
    if is_full(&e) { Error::Full(e) } else { Error::MetaIo(e) }
}

/// Whether `e` means the database file failed and the handle must be reopened.
fn breaks(e: &Error) -> bool {
    matches!(e, Error::Full(_) | Error::MetaIo(_))
}

/// Why the database is unusable: enough to give each caller an error of the same kind.
struct Broken {
    kind: io::ErrorKind,
    message: String,
    /// Not reopened before this.
    retry_at: Instant,
}

impl Broken {
    fn error(&self) -> Error {
        io_failure(io::Error::new(self.kind, self.message.clone()))
    }
}

struct Slot {
    /// `None` once closed for a reopen that failed.
    db: Option<Database>,
    broken: Option<Broken>,
    /// Counts reopens, so a failure seen on a database since replaced breaks nothing.
    generation: u64,
}

pub(super) struct Handle {
    path: PathBuf,
    slot: RwLock<Slot>,
}

impl Handle {
    /// Open (or create) the database.
    pub(super) fn open(path: &Path) -> Result<Handle> {
        Ok(Handle {
            path: path.to_owned(),
            slot: RwLock::new(Slot {
                db: Some(open(path)?),
                broken: None,
                generation: 0,
            }),
        })
    }

    /// Run `f` in a read transaction.
    pub(super) fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        self.with_db(|db| f(&db.begin_read().map_err(db_err)?))
    }

    /// Run `f` in a write transaction and commit it with `durability`.
    pub(super) fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        self.with_db(|db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(|e| Error::Meta(e.to_string()))?;
            let out = f(&txn)?;
            txn.commit().map_err(db_err)?;
            Ok(out)
        })
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        self.reopen_if_broken()?;
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(broken) = &slot.broken {
            // Broken again between the reopen and this call.
            return Err(broken.error());
        }
        let generation = slot.generation;
        let out = f(slot.db.as_ref().expect("an unbroken handle has its database"));
        if let Err(e) = &out
            && breaks(e)
        {
            drop(slot);
            self.mark_broken(generation, e);
        }
        out
    }

    fn mark_broken(&self, generation: u64, e: &Error) {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.broken.is_none() && slot.generation == generation {
            tracing::warn!(error = %e, "the metadata database failed; it is reopened before its next use");
            let (kind, message) = match e {
                Error::Full(io) | Error::MetaIo(io) => (io.kind(), io.to_string()),
                other => (io::ErrorKind::Other, other.to_string()),
            };
            slot.broken = Some(Broken {
                kind,
                message,
                retry_at: Instant::now(),
            });
        }
    }

    /// Close and reopen the database if it is broken, unless the last attempt was too recent.
    fn reopen_if_broken(&self) -> Result<()> {
        if self
            .slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .broken
            .is_none()
        {
            return Ok(());
        }
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        let Some(broken) = &mut slot.broken else {
            return Ok(()); // another caller reopened it meanwhile
        };
        if Instant::now() < broken.retry_at {
            return Err(broken.error());
        }
        broken.retry_at = Instant::now() + REOPEN_EVERY;
        if let Some(db) = slot.db.take()
            && let Err(e) = db.close()
        {
            // The file is closed either way; its last commit is what the reopen recovers.
            tracing::debug!(error = %e, "closing the failed metadata database");
        }
        match open(&self.path) {
            Ok(db) => {
                slot.db = Some(db);
                slot.broken = None;
                slot.generation += 1;
                tracing::info!(path = %self.path.display(), "the metadata database was reopened");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "reopening the metadata database failed; trying again in {REOPEN_EVERY:?}");
                if breaks(&e)
                    && let (Some(broken), Error::Full(io) | Error::MetaIo(io)) = (&mut slot.broken, &e)
                {
                    broken.kind = io.kind();
                    broken.message = io.to_string();
                }
                Err(e)
            }
        }
    }
}

fn open(path: &Path) -> Result<Database> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked,
        other => db_err(other),
    })
}
