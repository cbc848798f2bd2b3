//! Surge domain core.
