//! `none`: the unedited model as an edit method. Its patch is empty (provenance only), so every benchmark table has
//! the unedited model as a row, scored by the same harness as the methods it is compared with.

use super::{EditContext, EditMethod, EditRequest, Patch, Provenance};
use crate::error::Result;

/// The method that changes nothing.
pub struct NoEdit;

impl EditMethod for NoEdit {
    fn name(&self) -> &str {
        "none"
    }

    fn edit(&self, _ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        Ok(Patch::new(Provenance::new(self.name(), &(), request)?, Default::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    use candle_core::Device;

    use crate::edit::PatchStack;
    use crate::model::Checkpoint;

    #[test]
    fn the_patch_is_empty_changes_nothing_and_round_trips() -> Result<()> {
        let ckpt = Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default"))?;
        let (model, processor) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?);
        let request = EditRequest { question: "q".into(), image: None, image_path: None, target: "a".into(), seed: 3 };
        let stack = PatchStack::new();
        let patch = NoEdit.edit(&EditContext { model: &*model, processor: &*processor, stack: &stack }, &request)?;
        assert_eq!((patch.num_parameters(), patch.provenance.method.as_str()), (0, "none"));
        assert!(patch.hooks()?.is_empty());
        let dir = std::env::temp_dir().join(format!("unike-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| crate::error::Error::io(&dir, e))?;
        patch.save(&dir.join("p"))?;
        let back = Patch::load(&dir.join("p"), &*model)?;
        assert_eq!((back.num_parameters(), &back.provenance), (0, &patch.provenance));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
