//! S3 storage classes: parsed once (from the config, or from what S3 reports),
//! then passed as a value that knows its own rules (minimum billed days,
//! whether it must be thawed before reading).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A storage class an object is written in, moved to, or reported in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StorageClass {
    Standard,
    StandardIa,
    OnezoneIa,
    IntelligentTiering,
    GlacierIr,
    Glacier,
    DeepArchive,
    ReducedRedundancy,
    ExpressOnezone,
    /// Not S3: a local target's files, listed as `LOCAL` in cost reports.
    Local,
    /// A class S3 reported that strata has no rules for (kept as reported,
    /// never accepted from the config).
    Other(String),
}

/// Every class the config accepts, as S3 names them.
const KNOWN: [StorageClass; 9] = [
    StorageClass::Standard,
    StorageClass::StandardIa,
    StorageClass::OnezoneIa,
    StorageClass::IntelligentTiering,
    StorageClass::GlacierIr,
    StorageClass::Glacier,
    StorageClass::DeepArchive,
    StorageClass::ReducedRedundancy,
    StorageClass::ExpressOnezone,
];

impl StorageClass {
    /// The classes strata has list prices for, and suggests in errors.
    pub const PRICED: [StorageClass; 4] = [
        StorageClass::Standard,
        StorageClass::StandardIa,
        StorageClass::Glacier,
        StorageClass::DeepArchive,
    ];

    /// The name S3 uses.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Standard => "STANDARD",
            Self::StandardIa => "STANDARD_IA",
            Self::OnezoneIa => "ONEZONE_IA",
            Self::IntelligentTiering => "INTELLIGENT_TIERING",
            Self::GlacierIr => "GLACIER_IR",
            Self::Glacier => "GLACIER",
            Self::DeepArchive => "DEEP_ARCHIVE",
            Self::ReducedRedundancy => "REDUCED_REDUNDANCY",
            Self::ExpressOnezone => "EXPRESS_ONEZONE",
            Self::Local => "LOCAL",
            Self::Other(s) => s,
        }
    }

    /// A class as S3 reported it: never fails, an unknown name is kept as `Other`.
    pub fn reported(s: &str) -> Self {
        match s {
            "LOCAL" => Self::Local,
            _ => s.parse().unwrap_or_else(|_| Self::Other(s.to_owned())),
        }
    }

    /// Objects in this class must be restored (thawed) before they can be read.
    pub fn is_archive(&self) -> bool {
        matches!(self, Self::Glacier | Self::DeepArchive)
    }

    /// Minimum storage duration (days) S3 bills for the class.
    pub fn minimum_days(&self) -> u32 {
        match self {
            Self::StandardIa | Self::OnezoneIa => 30,
            Self::Glacier | Self::GlacierIr => 90,
            Self::DeepArchive => 180,
            _ => 0,
        }
    }

    /// USD per 1,000 lifecycle transitions into the class (AWS us-east-1 list prices).
    pub fn transition_per_1000(&self) -> f64 {
        match self {
            Self::StandardIa | Self::OnezoneIa => 0.01,
            Self::Glacier | Self::GlacierIr => 0.03,
            Self::DeepArchive => 0.05,
            _ => 0.0,
        }
    }

    /// Hours a thaw takes at most, by retrieval tier (S3's published figures).
    pub fn thaw_hours(&self, tier: super::ThawTier) -> u32 {
        use super::ThawTier;
        match (self, tier) {
            (Self::DeepArchive, ThawTier::Bulk) => 48,
            (Self::DeepArchive, _) => 12,
            (_, ThawTier::Bulk) => 12,
            (_, ThawTier::Expedited) => 1,
            (_, ThawTier::Standard) => 5,
        }
    }
}

/// An unknown storage class in the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown storage class '{0}' (expected one of STANDARD, STANDARD_IA, GLACIER, DEEP_ARCHIVE)"
)]
pub struct UnknownStorageClass(pub String);

impl FromStr for StorageClass {
    type Err = UnknownStorageClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KNOWN
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownStorageClass(s.to_owned()))
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// By name, so reports list classes in the order they always did.
impl Ord for StorageClass {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for StorageClass {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl serde::Serialize for StorageClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Read from manifests: whatever class was recorded is kept, known or not.
impl<'de> serde::Deserialize<'de> for StorageClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::reported(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_class_reads_back_as_itself_and_unknown_ones_are_kept() {
        for c in KNOWN {
            assert_eq!(c.as_str().parse::<StorageClass>(), Ok(c.clone()));
            assert_eq!(StorageClass::reported(c.as_str()), c);
        }
        assert_eq!(
            StorageClass::reported("SNOW"),
            StorageClass::Other("SNOW".into())
        );
        assert!("standard".parse::<StorageClass>().is_err());
        assert!("SNOW".parse::<StorageClass>().is_err());
        // A local disk is not a class a config can ask S3 for.
        assert!("LOCAL".parse::<StorageClass>().is_err());
        assert_eq!(StorageClass::reported("LOCAL"), StorageClass::Local);
    }

    #[test]
    fn classes_order_by_name_and_serialize_as_s3_names_them() {
        let mut v = vec![
            StorageClass::Standard,
            StorageClass::DeepArchive,
            StorageClass::Glacier,
        ];
        v.sort();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["DEEP_ARCHIVE","GLACIER","STANDARD"]"#
        );
        let back: Vec<StorageClass> = serde_json::from_str(r#"["GLACIER","X"]"#).unwrap();
        assert_eq!(
            back,
            vec![StorageClass::Glacier, StorageClass::Other("X".into())]
        );
    }

    #[test]
    fn only_glacier_and_deep_archive_need_a_thaw() {
        let archived: Vec<_> = KNOWN.iter().filter(|c| c.is_archive()).collect();
        assert_eq!(
            archived,
            vec![&StorageClass::Glacier, &StorageClass::DeepArchive]
        );
    }
}
