//! Switches an operator flips while berth serves: read-only maintenance mode and whether deletes
//! are allowed (`[storage] read_only` and `[storage] delete`, re-read on SIGHUP). Every write path
//! of the service asks here first, so the HTTP API, the web UI and the maintenance commands obey
//! the same switch.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, Registry, Result};

/// The current state of the switches; shared by every clone of the registry.
#[derive(Debug)]
pub struct Switches {
    read_only: AtomicBool,
    delete: AtomicBool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            read_only: AtomicBool::new(false),
            delete: AtomicBool::new(true),
        }
    }
}

impl Registry {
    /// Set both switches as `[storage]` says (at startup, on SIGHUP, and in the maintenance
    /// commands when they work on the store themselves).
    pub fn apply_switches(&self, storage: &crate::config::Storage) {
        self.set_read_only(storage.read_only);
        self.set_delete_enabled(storage.delete);
    }

    /// Turn read-only maintenance mode on or off: pushes and deletes are refused while it is on;
    /// pulls, cache fills and garbage collection go on. Returns the previous state.
    pub fn set_read_only(&self, on: bool) -> bool {
        self.switches.read_only.swap(on, Ordering::SeqCst)
    }

    pub fn read_only(&self) -> bool {
        self.switches.read_only.load(Ordering::SeqCst)
    }

    /// Allow or refuse deletes of manifests, tags and blobs. Returns the previous state.
    pub fn set_delete_enabled(&self, on: bool) -> bool {
        self.switches.delete.swap(on, Ordering::SeqCst)
    }

    pub fn delete_enabled(&self) -> bool {
        self.switches.delete.load(Ordering::SeqCst)
    }

    /// Refuse a push (an upload or a manifest PUT) in read-only mode.
    pub fn check_push(&self) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// Refuse a delete in read-only mode or when deletes are off.
    pub fn check_delete(&self) -> Result<()> {
        self.check_push()?;
        if !self.delete_enabled() {
            return Err(Error::DeleteDisabled);
        }
        Ok(())
    }
}
