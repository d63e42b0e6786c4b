//! What a backup is, independent of where it is stored or how it is made: the
//! manifest and its authentication, the object layout and backup ids, and the
//! value types the layers above pass to each other. No I/O.

pub mod manifest;
