//! Domain enums stored in the catalog.
//!
//! Every enum is stored as a lowercase string (at most 16 characters), serialized by serde as
//! the same lowercase string, and parsed by [`FromStr`] case-insensitively, so `admin`, `Admin`
//! and the GraphQL spelling `ADMIN` all parse. [`as_str`](Role::as_str) gives the stored form.

use std::fmt;
use std::str::FromStr;

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A string that is not one of an enum's accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: expected one of {}", .expected.join(", "))]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `role`.
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted values, in their stored (lowercase) form.
    pub expected: &'static [&'static str],
}

/// Declares a stored enum: the sea-orm active enum, serde, `as_str`, `ALL`, `Display` and
/// `FromStr`, all from one list of `Variant => "stored"` pairs.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        $name:ident as $what:literal { $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize,
            Deserialize,
        )]
        #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[sea_orm(string_value = $value)]
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            const NAMES: &'static [&'static str] = &[$($value),+];

            /// The stored (lowercase) form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| ParseEnumError {
                        what: $what,
                        value: s.to_owned(),
                        expected: Self::NAMES,
                    })
            }
        }
    };
}

stored_enum! {
    /// A token's role. Ordered: `Viewer < Engineer < Pipeline < Admin`, so
    /// `role >= Role::Engineer` reads as "engineer and up".
    #[derive(PartialOrd, Ord)]
    Role as "role" {
        Viewer => "viewer",
        Engineer => "engineer",
        Pipeline => "pipeline",
        Admin => "admin",
    }
}

stored_enum! {
    /// What produced a run.
    RunKind as "run kind" {
        Simulation => "simulation",
        Benchmark => "benchmark",
        /// Software-in-the-loop.
        Sil => "sil",
    }
}

stored_enum! {
    /// A run's outcome as its sidecar or pipeline reports it.
    RunStatus as "run status" {
        Running => "running",
        Passed => "passed",
        Failed => "failed",
        Error => "error",
    }
}

stored_enum! {
    /// Lifecycle of a reservation: `pending → materializing → ready`, then `released` or
    /// `expired`; `failed` from any non-final state.
    ReservationState as "reservation state" {
        Pending => "pending",
        Materializing => "materializing",
        Ready => "ready",
        Failed => "failed",
        Released => "released",
        Expired => "expired",
    }
}

stored_enum! {
    /// Lifecycle of a write-back transfer: `queued → uploading → done`, or `failed` (a
    /// permanent upstream error: the bytes stay dirty in the office and the transfer is
    /// retried at the next start), or `superseded` (a later write or delete of the same key
    /// was acknowledged before this one started: last write wins, so it never runs).
    TransferState as "transfer state" {
        Queued => "queued",
        Uploading => "uploading",
        Done => "done",
        Failed => "failed",
        Superseded => "superseded",
    }
}

stored_enum! {
    /// What a write-back transfer does upstream.
    TransferOp as "transfer op" {
        Put => "put",
        Delete => "delete",
    }
}

stored_enum! {
    /// State of a cache entry: `staging` (being written, not servable), `ready` (verified and
    /// servable), `dirty` (written locally, not yet in S3: never evicted).
    CacheEntryState as "cache entry state" {
        Staging => "staging",
        Ready => "ready",
        Dirty => "dirty",
    }
}

stored_enum! {
    /// Which kind of catalog entity a run input refers to.
    InputKind as "input kind" {
        Drive => "drive",
        Scenario => "scenario",
        Run => "run",
        Dataset => "dataset",
    }
}

stored_enum! {
    /// Where a catalog record came from: a sidecar in S3, or the API.
    RecordSource as "record source" {
        Sidecar => "sidecar",
        Api => "api",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all<E>(all: &[E])
    where
        E: ActiveEnum<Value = String>
            + FromStr<Err = ParseEnumError>
            + Serialize
            + Copy
            + fmt::Display
            + fmt::Debug
            + PartialEq,
    {
        for &v in all {
            let stored = v.to_value();
            assert_eq!(
                stored,
                v.to_string(),
                "{v:?}: stored form differs from Display"
            );
            assert!(
                stored.len() <= 16,
                "{v:?}: stored form longer than the column"
            );
            assert_eq!(stored, stored.to_lowercase());
            assert_eq!(
                serde_json::to_value(v).ok(),
                Some(serde_json::Value::String(stored.clone()))
            );
            assert_eq!(stored.parse::<E>().ok(), Some(v));
            assert_eq!(stored.to_uppercase().parse::<E>().ok(), Some(v));
            assert_eq!(E::try_from_value(&stored).ok(), Some(v));
        }
    }

    #[test]
    fn stored_serde_display_and_parse_agree() {
        check_all(Role::ALL);
        check_all(RunKind::ALL);
        check_all(RunStatus::ALL);
        check_all(ReservationState::ALL);
        check_all(TransferState::ALL);
        check_all(TransferOp::ALL);
        check_all(CacheEntryState::ALL);
        check_all(InputKind::ALL);
        check_all(RecordSource::ALL);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Engineer);
        assert!(Role::Engineer < Role::Pipeline);
        assert!(Role::Pipeline < Role::Admin);
        assert_eq!(Role::ALL.iter().max(), Some(&Role::Admin));
    }

    #[test]
    fn parse_rejects_unknown_values_naming_them() {
        let err = "root".parse::<Role>().expect_err("root is not a role");
        assert_eq!(err.value, "root");
        assert_eq!(
            err.to_string(),
            "invalid role `root`: expected one of viewer, engineer, pipeline, admin"
        );
        let err = "".parse::<RunStatus>().expect_err("empty is not a status");
        assert!(
            err.to_string().starts_with("invalid run status ``"),
            "{err}"
        );
        assert!("passed ".parse::<RunStatus>().is_err());
    }

    #[test]
    fn serde_rejects_unknown_values() {
        assert!(serde_json::from_str::<RunKind>("\"hil\"").is_err());
        assert_eq!(
            serde_json::from_str::<RunKind>("\"sil\"").ok(),
            Some(RunKind::Sil)
        );
    }
}
