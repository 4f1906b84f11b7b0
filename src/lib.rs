//! ztgate: an edge zero-trust segmentation gateway for factories.
pub mod protocol;
