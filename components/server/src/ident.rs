//! The store's identity in its data dir (upstream keeps `StoreIdent` under
//! `STORE_IDENT_KEY` in the kv engine; we have no engine, so a small file),
//! written atomically, and the data dir's lock (upstream: the `LOCK` file).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the identity inside the data dir.
pub const IDENT_FILE: &str = "store_ident.json";
/// File name of the lock inside the data dir.
pub const LOCK_FILE: &str = "LOCK";

/// Which cluster this data dir belongs to and which store it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdent {
    /// The PD cluster id.
    pub cluster_id: u64,
    /// This store's id.
    pub store_id: u64,
}

impl StoreIdent {
    /// Reads the identity in `dir`; `Ok(None)` when the store was never
    /// bootstrapped there.
    pub fn load(dir: &Path) -> Result<Option<StoreIdent>, String> {
        let path = dir.join(IDENT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {}", path.display(), e)),
        };
        let ident: StoreIdent = serde_json::from_str(&text)
            .map_err(|e| format!("corrupt store identity {}: {}", path.display(), e))?;
        if ident.cluster_id == 0 || ident.store_id == 0 {
            return Err(format!(
                "invalid store identity {}: {:?} (ids must be non-zero)",
                path.display(),
                ident
            ));
        }
        Ok(Some(ident))
    }

    /// Writes the identity into `dir` atomically: a temporary file, synced,
    /// renamed over the old one, and the directory synced.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(IDENT_FILE);
        let tmp = dir.join(format!("{}.tmp", IDENT_FILE));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(serde_json::to_string(self).unwrap_or_default().as_bytes())?;
            f.sync_all()?;
            // A crash here leaves the temporary file only: the identity is
            // the old one or none, never a torn one.
            fail::fail_point!("store_ident_before_rename");
            fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {}", path.display(), e))
    }
}

/// The data dir, created if needed and locked for this process. Dropping it
/// releases the lock.
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if missing and takes its lock; a second process on the
    /// same dir gets an error naming it.
    pub fn open(path: &Path) -> Result<DataDir, String> {
        fs::create_dir_all(path)
            .map_err(|e| format!("cannot create data dir {}: {}", path.display(), e))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {}", lock_path.display(), e))?;
        lock.try_lock().map_err(|_| {
            format!(
                "data dir {} is in use by another tikv-server (lock {} is held)",
                path.display(),
                lock_path.display()
            )
        })?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreIdent::load(dir.path()).unwrap(), None);
        let id = StoreIdent {
            cluster_id: 7,
            store_id: 1001,
        };
        id.save(dir.path()).unwrap();
        assert_eq!(StoreIdent::load(dir.path()).unwrap(), Some(id));
        assert!(!dir.path().join("store_ident.json.tmp").exists());
    }

    #[test]
    fn corrupt_or_zero_identity_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENT_FILE), "{\"cluster_id\": 1").unwrap();
        let e = StoreIdent::load(dir.path()).unwrap_err();
        assert!(e.contains(IDENT_FILE) && e.contains("corrupt"), "{}", e);
        fs::write(
            dir.path().join(IDENT_FILE),
            "{\"cluster_id\":1,\"store_id\":0}",
        )
        .unwrap();
        let e = StoreIdent::load(dir.path()).unwrap_err();
        assert!(e.contains("non-zero"), "{}", e);
    }

    #[test]
    fn second_open_of_a_locked_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(&dir.path().join("store")).unwrap();
        let e = DataDir::open(d.path()).err().unwrap();
        assert!(e.contains("in use"), "{}", e);
        drop(d);
        DataDir::open(&dir.path().join("store")).unwrap();
    }
}
