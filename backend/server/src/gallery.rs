//! The world's image gallery (the Playground's starting points) and image storage: gallery images are the data
//! set's files; uploads are validated, re-encoded as PNG and stored by content hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use unike_core::data::{EditCase, Task};
use unike_shared::playground::{GalleryItem, ImageRef, IMAGE_MAX_BYTES};
use unike_shared::routes;

use super::auth;
use super::error::{ApiErr, ApiResult};
use super::AppState;

/// Largest accepted image side, in pixels.
const SIDE_MAX: u32 = 4096;

/// Gallery entries and the cases they come from.
pub struct Gallery {
    pub items: Vec<GalleryItem>,
    cases: HashMap<String, EditCase>,
}

impl Gallery {
    /// The first `vqa` VQA and `caption` caption cases of the world's eval split in `data`.
    pub fn load(data: &Path, vqa: usize, caption: usize) -> anyhow::Result<Self> {
        let mut items = Vec::new();
        let mut cases = HashMap::new();
        for (task, n) in [(Task::Vqa, vqa), (Task::Caption, caption)] {
            let name = if task == Task::Vqa { "vqa" } else { "caption" };
            for (i, c) in unike_pipeline::bench::cases(data, task, "eval", n)?.into_iter().enumerate() {
                let id = format!("{name}-{i}");
                items.push(GalleryItem {
                    id: id.clone(),
                    task: name.into(),
                    url: routes::image(&id),
                    question: c.prompt.clone(),
                    target: c.target.clone(),
                    pre_edit: c.pre_edit.clone(),
                });
                cases.insert(id, c);
            }
        }
        Ok(Self { items, cases })
    }

    /// The gallery id (as stored) and case of `id`.
    pub fn case(&self, id: &str) -> Option<(&str, &EditCase)> {
        self.cases.get_key_value(id).map(|(k, c)| (k.as_str(), c))
    }

    /// Any case (for the locality probes of an uploaded image).
    pub fn first(&self) -> Option<(&str, &EditCase)> {
        self.items.first().and_then(|i| self.case(&i.id))
    }
}

/// A resolved image: its file, its URL, and the gallery case it belongs to.
pub struct ResolvedImage<'a> {
    pub path: PathBuf,
    pub url: String,
    /// The gallery id and case.
    pub case: Option<(&'a str, &'a EditCase)>,
    /// A transient upload's file, removed when this is dropped.
    _transient: Option<Transient>,
}

/// What [`resolve`] does with an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// An edit's image: kept under `uploads/` (counted against the upload quota) for the edit's probes and pages.
    Stored,
    /// An answer's image: written for the answer only and removed afterwards (unless it is stored already).
    Transient,
}

/// A file removed on drop.
struct Transient(PathBuf);

impl Drop for Transient {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bytes held under `dir` (one level).
fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// Turns an [`ImageRef`] into a file: a gallery id must exist; an upload must be a PNG or JPEG of at most
/// [`IMAGE_MAX_BYTES`] and [`SIDE_MAX`] pixels a side (checked from its header before anything is decoded, and decoded
/// on a blocking thread).
pub async fn resolve<'a>(st: &'a AppState, image: &ImageRef, keep: Keep) -> ApiResult<ResolvedImage<'a>> {
    match image {
        ImageRef::Gallery { id } => {
            let (id, case) =
                st.gallery.case(id).ok_or_else(|| ApiErr::bad_request(format!("no gallery image {id:?}")))?;
            Ok(ResolvedImage {
                path: case.image.clone(),
                url: routes::image(id),
                case: Some((id, case)),
                _transient: None,
            })
        }
        ImageRef::Upload { base64 } => {
            if base64.len() > IMAGE_MAX_BYTES * 4 / 3 + 8 {
                return Err(too_large());
            }
            let b64 = base64.split_once(";base64,").map(|(_, d)| d).unwrap_or(base64);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| ApiErr::bad_request(format!("the image is not valid base64: {e}")))?;
            if bytes.len() > IMAGE_MAX_BYTES {
                return Err(too_large());
            }
            let name = format!("upload-{}", &auth::sha256_hex(&bytes)[..32]);
            let dir = st.data_dir.join("uploads");
            let path = dir.join(format!("{name}.png"));
            if path.is_file() {
                return Ok(ResolvedImage { path, url: routes::image(&name), case: None, _transient: None });
            }
            if keep == Keep::Transient {
                let tmp_dir = dir.join("transient");
                let out = tmp_dir.join(format!("{}.png", auth::random_hex(8)?));
                let guard = Transient(out.clone());
                tokio::task::spawn_blocking(move || store_upload(&bytes, &tmp_dir, &out))
                    .await
                    .map_err(ApiErr::internal)??;
                return Ok(ResolvedImage {
                    path: guard.0.clone(),
                    url: routes::image(&name),
                    case: None,
                    _transient: Some(guard),
                });
            }
            let quota = st.uploads_bytes;
            let held = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || bytes_in(&dir)
            })
            .await
            .map_err(ApiErr::internal)?;
            if held + bytes.len() as u64 > quota {
                return Err(ApiErr::quota(format!(
                    "the studio's uploaded images fill their quota ({} MB); use a gallery image",
                    quota / (1024 * 1024)
                )));
            }
            let out = path.clone();
            tokio::task::spawn_blocking(move || store_upload(&bytes, &dir, &out)).await.map_err(ApiErr::internal)??;
            Ok(ResolvedImage { path, url: routes::image(&name), case: None, _transient: None })
        }
    }
}

fn too_large() -> ApiErr {
    ApiErr::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!("images are limited to {} MB", IMAGE_MAX_BYTES / (1024 * 1024)),
    )
}

/// Validates an uploaded image and stores it as PNG at `path` (in `dir`). The sides are read from the header first,
/// so a small file that claims a huge image (a decompression bomb) is refused without being decoded.
fn store_upload(bytes: &[u8], dir: &Path, path: &Path) -> ApiResult<()> {
    let not_image = |e: image::ImageError| ApiErr::bad_request(format!("the upload is not a PNG or JPEG image: {e}"));
    let reader =
        || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(ApiErr::internal);
    let (w, h) = reader()?.into_dimensions().map_err(not_image)?;
    if w == 0 || h == 0 || w > SIDE_MAX || h > SIDE_MAX {
        return Err(ApiErr::bad_request(format!("image sides must be 1 to {SIDE_MAX} pixels (this one is {w} x {h})")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(SIDE_MAX);
    limits.max_image_height = Some(SIDE_MAX);
    limits.max_alloc = Some(256 * 1024 * 1024);
    let mut r = reader()?;
    r.limits(limits);
    let img = r.decode().map_err(not_image)?;
    std::fs::create_dir_all(dir).map_err(ApiErr::internal)?;
    let tmp = path.with_extension(format!("{}.tmp", auth::random_hex(4)?));
    img.to_rgb8().save_with_format(&tmp, image::ImageFormat::Png).map_err(ApiErr::internal)?;
    std::fs::rename(&tmp, path).map_err(ApiErr::internal)?;
    Ok(())
}

/// `GET /api/gallery`.
pub async fn list(State(st): State<AppState>) -> Json<Vec<GalleryItem>> {
    Json(st.gallery.items.clone())
}

/// The file of an image name (`ID`, `ID~other`, `ID~unrelated` of the gallery, or `upload-<sha>`; a `/api/images/`
/// URL is accepted too), with the gallery case when the name is a gallery image itself. `None` for unknown names.
pub fn file_of<'a>(st: &'a AppState, name: &str) -> Option<(PathBuf, Option<(&'a str, &'a EditCase)>)> {
    let name = name.trim();
    let name = name.strip_prefix(routes::image("").as_str()).unwrap_or(name);
    let (base, which) = name.rsplit_once('~').unwrap_or((name, ""));
    if let Some((id, c)) = st.gallery.case(base) {
        return match which {
            "" => Some((c.image.clone(), Some((id, c)))),
            "other" => Some((c.rephrase_image.clone(), None)),
            "unrelated" => Some((c.m_loc_image.clone(), None)),
            _ => None,
        };
    }
    let upload =
        name.starts_with("upload-") && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    upload.then(|| (st.data_dir.join("uploads").join(format!("{name}.png")), None))
}

/// `GET /api/images/{name}`: a gallery image (`ID`, its entity's other image `ID~other`, its unrelated image
/// `ID~unrelated`) or a stored upload, as PNG.
pub async fn image(State(st): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult<impl IntoResponse> {
    let (path, _) = file_of(&st, &name).ok_or_else(|| ApiErr::not_found(format!("image {name:?}")))?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| ApiErr::not_found(format!("image {name:?}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "public, max-age=86400")], bytes))
}
