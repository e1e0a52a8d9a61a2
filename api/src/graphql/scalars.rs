//! Scalars of the contract: `Long` (64-bit byte counts as JSON numbers) and the enums mirrored
//! from the domain enums of `milepost-schema`.

use async_graphql::{Enum, InputValueError, InputValueResult, Scalar, ScalarType, Value};
use milepost_schema::enums;

/// A 64-bit integer serialized as a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Long(pub i64);

#[Scalar(name = "Long")]
impl ScalarType for Long {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n.as_i64().map(Long).ok_or_else(|| {
                InputValueError::custom(format!("expected a 64-bit integer, got {n}"))
            }),
            other => Err(InputValueError::expected_type(other.clone())),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(self.0.into())
    }
}

macro_rules! mirror_enum {
    ($name:ident, $domain:ty, [$($variant:ident),*]) => {
        #[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
        #[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),* }

        impl From<$domain> for $name {
            fn from(value: $domain) -> Self {
                match value { $(<$domain>::$variant => $name::$variant),* }
            }
        }

        impl From<$name> for $domain {
            fn from(value: $name) -> Self {
                match value { $($name::$variant => <$domain>::$variant),* }
            }
        }
    };
}

mirror_enum!(Role, enums::Role, [Viewer, Engineer, Pipeline, Admin]);
mirror_enum!(RunKind, enums::RunKind, [Simulation, Benchmark, Sil]);
mirror_enum!(
    RunStatus,
    enums::RunStatus,
    [Running, Passed, Failed, Error]
);
mirror_enum!(
    TransferState,
    enums::TransferState,
    [Queued, Uploading, Done, Failed, Superseded]
);
mirror_enum!(TransferOp, enums::TransferOp, [Put, Delete]);
