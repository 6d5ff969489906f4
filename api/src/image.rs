//! The image store: kernels, initrds and disk images, uploaded with their SHA-256.

use serde::{Deserialize, Serialize};

/// `GET` → [`ImageList`].
pub const IMAGES: &str = "/v1/images";
/// `PUT` (body: the file, `X-Content-Sha256` header: its hex SHA-256) → [`Image`]; `DELETE`.
pub const IMAGE: &str = "/v1/images/{kind}/{name}";
/// The header carrying an upload's expected SHA-256 (hex).
pub const SHA256_HEADER: &str = "X-Content-Sha256";

/// The kinds of image the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Kernel,
    Initrd,
    Disk,
}

impl ImageKind {
    pub const ALL: [ImageKind; 3] = [ImageKind::Kernel, ImageKind::Initrd, ImageKind::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
            ImageKind::Disk => "disk",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub kind: ImageKind,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Where images are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// A filesystem labelled KEEL-DATA on a local disk.
    Disk,
    /// A bounded RAM area: lost at reboot.
    Ram,
}

/// Answer to `GET` [`IMAGES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageList {
    pub store: StoreKind,
    /// Bytes the store can hold and bytes free.
    pub capacity: u64,
    pub free: u64,
    pub images: Vec<Image>,
}
