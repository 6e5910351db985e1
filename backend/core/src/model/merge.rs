//! Placing image embeddings at the image-token positions of a prompt, as every family's `get_placeholder_mask` /
//! `masked_scatter` does in transformers: the `n`-th image-token position (reading order over the batch) takes the
//! `n`-th image row.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// `ids (b, s)` → input embeddings `(b, s, d)`: text ids embedded by `embed` (`(b, s)` u32 → `(b, s, d)`), image-token
/// positions (`image_id`) filled in reading order by the rows of `image_rows (N, d)`, cast to `dtype`. The count of
/// image tokens must equal `N` (else the error `mismatch(tokens, rows)` says); ids at or past `vocab` are refused.
pub(crate) fn merge_image_rows(
    ids: &Tensor,
    image_id: u32,
    vocab: u32,
    image_rows: Option<&Tensor>,
    (dtype, device): (DType, &Device),
    embed: impl Fn(&Tensor) -> Result<Tensor>,
    mismatch: impl Fn(usize, usize) -> String,
) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let n_image_ids = rows.iter().flatten().filter(|&&t| t == image_id).count();
    let n_rows = image_rows.map(|f| f.dim(0)).transpose()?.unwrap_or(0);
    if n_image_ids != n_rows {
        return Err(Error::Invalid(mismatch(n_image_ids, n_rows)));
    }
    let mut text_ids = Vec::with_capacity(b * s);
    let mut gather = Vec::with_capacity(b * s);
    let mut next_image_row = (b * s) as u32;
    for (k, &t) in rows.iter().flatten().enumerate() {
        if t == image_id {
            text_ids.push(0u32);
            gather.push(next_image_row);
            next_image_row += 1;
        } else if t >= vocab {
            return Err(Error::Invalid(format!("token id {t} is outside the vocabulary of {vocab}")));
        } else {
            text_ids.push(t);
            gather.push(k as u32);
        }
    }
    let text_emb = embed(&Tensor::from_vec(text_ids, (b, s), device)?)?;
    let Some(img) = image_rows else {
        return Ok(text_emb);
    };
    let d = text_emb.dim(2)?;
    // Gather from [text rows; image rows]: each position takes its own text row or the next image row.
    let table = Tensor::cat(&[&text_emb.reshape((b * s, d))?, &img.to_dtype(dtype)?], 0)?;
    let gather = Tensor::from_vec(gather, b * s, device)?;
    Ok(table.index_select(&gather, 0)?.reshape((b, s, d))?)
}
