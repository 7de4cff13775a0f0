//! The state file: the running desired state plus the id allocation, written
//! atomically (write to a temporary file, fsync, rename, fsync the directory), so a
//! restarted daemon comes back with exactly what was running.

use std::{
    fs::{self, File},
    io::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{state::State, sync::Alloc};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub generation: u64,
    pub state: State,
    pub alloc: Alloc,
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("state file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub fn save(path: &Path, saved: &Saved) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(saved)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

pub fn load(path: &Path) -> Result<Option<Saved>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("parsing state file {}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
