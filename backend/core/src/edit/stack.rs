//! A [`PatchStack`]: an ordered stack of patches with stable ids, applied together through hooks. Stacking gives
//! sequential editing, dropping any patch gives undo, and each user can own a stack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;

use super::patch::{Patch, Retrieval};
use crate::error::{Error, Result};
use crate::hooks::Hooks;

/// Hooks of `patches` applied together. Latent entries of every patch join the memory of the first patch that has
/// one, with its retrieval settings.
pub(super) fn stack_hooks<'a>(patches: impl Iterator<Item = &'a Patch>) -> Result<Hooks> {
    stack_hooks_with(patches, true)
}

/// [`stack_hooks`], with or without the edit memories that a new edit of their kind rebuilds with itself (GRACE's
/// codebooks, WISE's side memories).
fn stack_hooks_with<'a>(patches: impl Iterator<Item = &'a Patch>, with_memories: bool) -> Result<Hooks> {
    let mut h = Hooks::none();
    let mut grace = Vec::new();
    let mut wise = Vec::new();
    let mut retrieval: Option<&Retrieval> = None;
    let mut entries: BTreeMap<usize, Vec<(Tensor, Tensor)>> = BTreeMap::new();
    let mut serac = Vec::new();
    for p in patches {
        h.extend(&p.own_hooks());
        serac.extend(p.serac.as_ref());
        grace.extend(p.grace.as_ref().filter(|_| with_memories));
        wise.extend(p.wise.as_ref().filter(|_| with_memories));
        if p.latent.is_empty() {
            continue;
        }
        let r = p.retrieval.as_ref().ok_or_else(|| Error::Invalid("latent entries without a memory".into()))?;
        retrieval.get_or_insert(r);
        for (l, e) in &p.latent {
            entries.entry(*l).or_default().push(e.clone());
        }
    }
    if let Some(r) = retrieval {
        h.extend(&r.knowledge.hooks(r.top_k, r.alpha, &entries)?);
    }
    h.extend(&super::serac::stack_hooks(&serac)?);
    h.extend(&super::grace::codebook_hooks(grace)?);
    h.extend(&super::wise::memory::wise_hooks(wise)?);
    Ok(h)
}

/// An ordered stack of patches with stable ids: push, drop any one (undo), apply all through hooks.
#[derive(Debug, Clone, Default)]
pub struct PatchStack {
    entries: Vec<(u64, Arc<Patch>)>,
    next_id: u64,
}

impl PatchStack {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes `patch` on top; returns its id.
    pub fn push(&mut self, patch: Patch) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push((id, Arc::new(patch)));
        id
    }

    /// Removes the patch with `id` from anywhere in the stack, returning it.
    pub fn remove(&mut self, id: u64) -> Result<Arc<Patch>> {
        let at = self
            .entries
            .iter()
            .position(|(i, _)| *i == id)
            .ok_or_else(|| Error::Invalid(format!("no patch with id {id} in the stack")))?;
        Ok(self.entries.remove(at).1)
    }

    /// Removes the top patch.
    pub fn pop(&mut self) -> Option<Arc<Patch>> {
        self.entries.pop().map(|(_, p)| p)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids and patches, bottom first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Patch)> {
        self.entries.iter().map(|(i, p)| (*i, p.as_ref()))
    }

    /// Hooks applying every patch, bottom first (their extra neurons add up, their prefixes sit side by side, their
    /// latent entries join one retrieval memory).
    pub fn hooks(&self) -> Result<Hooks> {
        stack_hooks(self.entries.iter().map(|(_, p)| p.as_ref()))
    }

    /// [`PatchStack::hooks`] without GRACE's codebooks and WISE's side memories (an edit of theirs rebuilds its
    /// layer's memory with itself).
    pub fn hooks_without_memories(&self) -> Result<Hooks> {
        stack_hooks_with(self.entries.iter().map(|(_, p)| p.as_ref()), false)
    }

    /// Saves every patch as `dir/NNNN` (bottom first).
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (_, p))| {
                let base = dir.join(format!("{i:04}"));
                p.save(&base).map(|_| base)
            })
            .collect()
    }
}
