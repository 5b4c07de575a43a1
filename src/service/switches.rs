//! Switches an operator flips while berth serves: read-only maintenance mode, whether deletes
//! are allowed (`[storage] read_only` and `[storage] delete`), and each upstream's offline mode
//! (`[[upstream]] offline`), all re-read on SIGHUP. Every write path of the service asks here
//! first, so the HTTP API, the web UI and the maintenance commands obey the same switch; the
//! offline switch lives in the upstream client itself, so no path can contact an offline upstream.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Admin, Core, Error, Result};

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

impl Admin {
    /// Set both switches as `[storage]` says (at startup, on SIGHUP, and in the maintenance
    /// commands when they work on the store themselves).
    pub fn apply_switches(&self, storage: &crate::config::Storage) {
        self.set_read_only(storage.read_only);
        self.set_delete_enabled(storage.delete);
    }

    /// Turn read-only maintenance mode on or off: pushes and deletes are refused while it is on;
    /// pulls, cache fills and garbage collection go on. Returns the previous state.
    pub fn set_read_only(&self, on: bool) -> bool {
        self.core.switches.read_only.swap(on, Ordering::SeqCst)
    }

    /// Allow or refuse deletes of manifests, tags and blobs. Returns the previous state.
    pub fn set_delete_enabled(&self, on: bool) -> bool {
        self.core.switches.delete.swap(on, Ordering::SeqCst)
    }

    /// Set each configured upstream's offline mode as its `[[upstream]]` entry says (at startup
    /// and on SIGHUP). Entries that name no running upstream are reported: adding or removing an
    /// upstream needs a restart.
    pub fn apply_offline(&self, entries: &[crate::config::UpstreamConfig]) {
        for entry in entries {
            match self.set_offline(&entry.name, entry.offline) {
                Some(was) if was != entry.offline => {
                    tracing::info!(upstream = %entry.name, offline = entry.offline, "upstream offline mode changed");
                }
                Some(_) => {}
                None => {
                    tracing::warn!(upstream = %entry.name, "an [[upstream]] entry added since the start takes effect only after a restart")
                }
            }
        }
    }

    /// Turn offline mode of upstream `name` on or off; its previous state, or `None` when no
    /// upstream has that name.
    pub fn set_offline(&self, name: &str, on: bool) -> Option<bool> {
        let upstream = self.core.upstreams.iter().find(|u| u.name() == name)?;
        Some(upstream.set_offline(on))
    }

    /// Each upstream's name and whether it is offline, in configuration order.
    pub fn upstream_modes(&self) -> Vec<(String, bool)> {
        self.core
            .upstreams
            .iter()
            .map(|u| (u.name().to_owned(), u.is_offline()))
            .collect()
    }
}

impl Core {
    pub fn read_only(&self) -> bool {
        self.switches.read_only.load(Ordering::SeqCst)
    }

    pub fn delete_enabled(&self) -> bool {
        self.switches.delete.load(Ordering::SeqCst)
    }

    /// The names of the upstreams in offline mode now (for eviction, which spares their content).
    pub fn offline_upstreams(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .filter(|u| u.is_offline())
            .map(|u| u.name().to_owned())
            .collect()
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
