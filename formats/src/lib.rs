//! Readers of the file formats the catalog describes.
//!
//! Pure and synchronous: the callers fetch the bytes (ranged reads of an object, a local file)
//! and hand them over; these modules check them and return typed structures or a typed error
//! naming what was malformed and where. No I/O, no async.
//!
//! - [`mcap`]: the footer and summary section of an MCAP log.

pub mod mcap;
