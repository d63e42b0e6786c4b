//! What a backup is, independent of where it is stored or how it is made: the
//! manifest and its authentication, the object layout and backup ids, and the
//! value types the layers above pass to each other. No I/O.

pub mod base_backup;
pub mod formats;
pub mod manifest;
pub mod storage_class;
pub mod timeline;
pub mod wal;

pub use formats::{
    Compression, CompressionParseError, DEFAULT_CHUNK_SIZE, DatabaseInfo, DumpFormat, LockMode,
    MAX_CHUNK_SIZE, ObjectLock, Outcome, RestoreTest, RunStatus, ServerSideEncryption, ThawTier,
};
pub use storage_class::{StorageClass, UnknownStorageClass};
