//! The parts of a Parquet footer the catalog describes, decoded field by field with the
//! bounded Thrift reader ([`super::thrift`]): the schema's leaf columns with their physical
//! and logical types, the row count, the number of row groups and `created_by`.
//!
//! Everything else is skipped by its wire type, as the Thrift rules for unknown fields want, so
//! footers of newer writers stay readable: a logical type or a column order this reader does
//! not know (the format grows them: geospatial types in 2.11, the IEEE-754 total order), row
//! groups without fields that were required once (`total_byte_size` of early writers),
//! statistics of any shape. An unknown logical type reads as its physical type, as the format
//! asks of readers. (The `parquet` crate refuses all of these: its generated unions fail on
//! an unknown variant and its schema builder on types it does not expect.)

use thrift::protocol::{TFieldIdentifier, TInputProtocol, TType};

use super::thrift::{describe, Bounded};
use super::ColumnInfo;

/// What [`decode`] found.
#[derive(Debug)]
pub(super) struct Footer {
    pub num_rows: i64,
    pub row_groups: usize,
    pub columns: Vec<ColumnInfo>,
    pub created_by: Option<String>,
}

/// One `SchemaElement`, as far as the description needs it.
#[derive(Debug, Default)]
struct Element {
    name: String,
    physical: Option<i32>,
    num_children: Option<i32>,
    converted: Option<i32>,
    /// `None` when absent or unknown to this reader.
    logical: Option<String>,
}

/// Decodes a footer's `FileMetaData`; errors name the problem and the byte offset.
pub(super) fn decode(buf: &[u8]) -> Result<Footer, String> {
    let mut prot = Bounded::new(buf);
    let (schema, num_rows, row_groups, created_by) = match read_file_metadata(&mut prot) {
        Ok(parts) => parts,
        Err(err) => return Err(format!("{} near byte {}", describe(&err), prot.pos)),
    };
    Ok(Footer {
        num_rows,
        row_groups,
        columns: leaf_columns(&schema)?,
        created_by,
    })
}

type FileParts = (Vec<Element>, i64, usize, Option<String>);

fn read_file_metadata(p: &mut Bounded<'_>) -> thrift::Result<FileParts> {
    let (mut schema, mut num_rows, mut row_groups, mut created_by) = (None, None, 0, None);
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        match (field.id, field.field_type) {
            (Some(2), TType::List) => {
                let list = p.read_list_begin()?;
                let mut elements = Vec::with_capacity(list.size.min(4096) as usize);
                for _ in 0..list.size {
                    elements.push(read_element(p)?);
                }
                p.read_list_end()?;
                schema = Some(elements);
            }
            (Some(3), TType::I64) => num_rows = Some(p.read_i64()?),
            (Some(4), TType::List) => {
                // Counted, not decoded: the catalog does not describe row groups.
                let list = p.read_list_begin()?;
                for _ in 0..list.size {
                    skip(p, list.element_type)?;
                }
                p.read_list_end()?;
                row_groups = list.size as usize;
            }
            (Some(6), TType::String) => created_by = Some(p.read_string()?),
            (_, other) => skip(p, other)?,
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    let missing = |what: &str| {
        thrift::Error::Protocol(thrift::ProtocolError::new(
            thrift::ProtocolErrorKind::InvalidData,
            format!("missing required field FileMetaData.{what}"),
        ))
    };
    Ok((
        schema.ok_or_else(|| missing("schema"))?,
        num_rows.ok_or_else(|| missing("num_rows"))?,
        row_groups,
        created_by,
    ))
}

/// Most nesting [`skip`] follows (the format nests a few levels; statistics and encodings
/// included, far fewer than this).
const MAX_SKIP_DEPTH: usize = 64;

/// Skips a value of type `ty`. Not `TInputProtocol::skip`: that reads binary fields as UTF-8
/// strings, and statistics hold arbitrary bytes.
fn skip(p: &mut Bounded<'_>, ty: TType) -> thrift::Result<()> {
    skip_at(p, ty, MAX_SKIP_DEPTH)
}

fn skip_at(p: &mut Bounded<'_>, ty: TType, depth: usize) -> thrift::Result<()> {
    if depth == 0 {
        return Err(thrift::Error::Protocol(thrift::ProtocolError::new(
            thrift::ProtocolErrorKind::DepthLimit,
            format!("values nested deeper than {MAX_SKIP_DEPTH} levels"),
        )));
    }
    match ty {
        TType::Bool => drop(p.read_bool()?),
        TType::I08 => drop(p.read_i8()?),
        TType::I16 => drop(p.read_i16()?),
        TType::I32 => drop(p.read_i32()?),
        TType::I64 => drop(p.read_i64()?),
        TType::Double => drop(p.read_double()?),
        TType::String => drop(p.read_bytes()?),
        TType::Struct => {
            p.read_struct_begin()?;
            while let Some(field) = next_field(p)? {
                skip_at(p, field.field_type, depth - 1)?;
                p.read_field_end()?;
            }
            p.read_struct_end()?;
        }
        TType::List => {
            let list = p.read_list_begin()?;
            for _ in 0..list.size {
                skip_at(p, list.element_type, depth - 1)?;
            }
            p.read_list_end()?;
        }
        TType::Set => {
            let set = p.read_set_begin()?;
            for _ in 0..set.size {
                skip_at(p, set.element_type, depth - 1)?;
            }
            p.read_set_end()?;
        }
        TType::Map => {
            let map = p.read_map_begin()?;
            for _ in 0..map.size {
                if let (Some(key), Some(value)) = (map.key_type, map.value_type) {
                    skip_at(p, key, depth - 1)?;
                    skip_at(p, value, depth - 1)?;
                }
            }
            p.read_map_end()?;
        }
        other => {
            return Err(thrift::Error::Protocol(thrift::ProtocolError::new(
                thrift::ProtocolErrorKind::InvalidData,
                format!("cannot skip a value of type {other:?}"),
            )))
        }
    }
    Ok(())
}

/// The next field of the struct being read, `None` at its end.
fn next_field(p: &mut Bounded<'_>) -> thrift::Result<Option<TFieldIdentifier>> {
    let field = p.read_field_begin()?;
    Ok((field.field_type != TType::Stop).then_some(field))
}

fn read_element(p: &mut Bounded<'_>) -> thrift::Result<Element> {
    let mut element = Element::default();
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        match (field.id, field.field_type) {
            (Some(1), TType::I32) => element.physical = Some(p.read_i32()?),
            (Some(4), TType::String) => element.name = p.read_string()?,
            (Some(5), TType::I32) => element.num_children = Some(p.read_i32()?),
            (Some(6), TType::I32) => element.converted = Some(p.read_i32()?),
            (Some(10), TType::Struct) => element.logical = read_logical(p)?,
            (_, other) => skip(p, other)?,
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok(element)
}

/// The `LogicalType` union: its one field names the type. `None` for a type this reader does
/// not know.
fn read_logical(p: &mut Bounded<'_>) -> thrift::Result<Option<String>> {
    let mut name = None;
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        let simple = |n: &str| Some(n.to_owned());
        let value = match (field.id, field.field_type) {
            (Some(1), _) => simple("STRING"),
            (Some(2), _) => simple("MAP"),
            (Some(3), _) => simple("LIST"),
            (Some(4), _) => simple("ENUM"),
            (Some(5), TType::Struct) => {
                let (scale, precision) = read_decimal(p)?;
                name = Some(format!("DECIMAL({precision},{scale})"));
                p.read_field_end()?;
                continue;
            }
            (Some(6), _) => simple("DATE"),
            (Some(7), TType::Struct) | (Some(8), TType::Struct) => {
                let (utc, unit) = read_time(p)?;
                let kind = if field.id == Some(7) {
                    "TIME"
                } else {
                    "TIMESTAMP"
                };
                name = Some(format!(
                    "{kind}({unit},{})",
                    if utc { "UTC" } else { "LOCAL" }
                ));
                p.read_field_end()?;
                continue;
            }
            (Some(10), TType::Struct) => {
                let (bits, signed) = read_integer(p)?;
                name = Some(format!(
                    "INT({bits},{})",
                    if signed { "SIGNED" } else { "UNSIGNED" }
                ));
                p.read_field_end()?;
                continue;
            }
            (Some(11), _) => simple("UNKNOWN"),
            (Some(12), _) => simple("JSON"),
            (Some(13), _) => simple("BSON"),
            (Some(14), _) => simple("UUID"),
            (Some(15), _) => simple("FLOAT16"),
            (Some(16), _) => simple("VARIANT"),
            (Some(17), _) => simple("GEOMETRY"),
            (Some(18), _) => simple("GEOGRAPHY"),
            _ => None,
        };
        // The variant's own struct (empty, or parameters not described) is skipped.
        skip(p, field.field_type)?;
        p.read_field_end()?;
        name = name.or(value);
    }
    p.read_struct_end()?;
    Ok(name)
}

/// `DecimalType`: (scale, precision).
fn read_decimal(p: &mut Bounded<'_>) -> thrift::Result<(i32, i32)> {
    let (mut scale, mut precision) = (0, 0);
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        match (field.id, field.field_type) {
            (Some(1), TType::I32) => scale = p.read_i32()?,
            (Some(2), TType::I32) => precision = p.read_i32()?,
            (_, other) => skip(p, other)?,
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok((scale, precision))
}

/// `TimeType` / `TimestampType`: (isAdjustedToUTC, unit).
fn read_time(p: &mut Bounded<'_>) -> thrift::Result<(bool, &'static str)> {
    let (mut utc, mut unit) = (false, "?");
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        match (field.id, field.field_type) {
            (Some(1), TType::Bool) => utc = p.read_bool()?,
            (Some(2), TType::Struct) => {
                // The `TimeUnit` union.
                p.read_struct_begin()?;
                while let Some(variant) = next_field(p)? {
                    unit = match variant.id {
                        Some(1) => "MILLIS",
                        Some(2) => "MICROS",
                        Some(3) => "NANOS",
                        _ => unit,
                    };
                    skip(p, variant.field_type)?;
                    p.read_field_end()?;
                }
                p.read_struct_end()?;
            }
            (_, other) => skip(p, other)?,
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok((utc, unit))
}

/// `IntType`: (bitWidth, isSigned).
fn read_integer(p: &mut Bounded<'_>) -> thrift::Result<(i8, bool)> {
    let (mut bits, mut signed) = (0, false);
    p.read_struct_begin()?;
    while let Some(field) = next_field(p)? {
        match (field.id, field.field_type) {
            (Some(1), TType::I08) => bits = p.read_i8()?,
            (Some(2), TType::Bool) => signed = p.read_bool()?,
            (_, other) => skip(p, other)?,
        }
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok((bits, signed))
}

const PHYSICAL: [&str; 8] = [
    "BOOLEAN",
    "INT32",
    "INT64",
    "INT96",
    "FLOAT",
    "DOUBLE",
    "BYTE_ARRAY",
    "FIXED_LEN_BYTE_ARRAY",
];

const CONVERTED: [&str; 22] = [
    "UTF8",
    "MAP",
    "MAP_KEY_VALUE",
    "LIST",
    "ENUM",
    "DECIMAL",
    "DATE",
    "TIME_MILLIS",
    "TIME_MICROS",
    "TIMESTAMP_MILLIS",
    "TIMESTAMP_MICROS",
    "UINT_8",
    "UINT_16",
    "UINT_32",
    "UINT_64",
    "INT_8",
    "INT_16",
    "INT_32",
    "INT_64",
    "JSON",
    "BSON",
    "INTERVAL",
];

/// The leaf columns of a flattened schema (depth first; element 0 is the root), with dotted
/// paths. Walked with an explicit stack: a hostile schema may nest as deep as it has elements.
fn leaf_columns(schema: &[Element]) -> Result<Vec<ColumnInfo>, String> {
    let root = schema
        .first()
        .ok_or_else(|| "the schema has no root element".to_owned())?;
    let children = |element: &Element, path: &str| -> Result<usize, String> {
        let n = element.num_children.unwrap_or(0);
        usize::try_from(n).map_err(|_| format!("schema element `{path}` has {n} children"))
    };
    let mut columns = Vec::new();
    // (children left, path of the group)
    let mut stack = vec![(children(root, "")?, String::new())];
    let mut next = 1;
    while let Some((left, prefix)) = stack.last_mut() {
        if *left == 0 {
            stack.pop();
            continue;
        }
        *left -= 1;
        let prefix = prefix.clone();
        let element = schema.get(next).ok_or_else(|| {
            format!(
                "the schema ends after {} elements, inside group `{}` that claims more children",
                schema.len(),
                if prefix.is_empty() { "(root)" } else { &prefix }
            )
        })?;
        next += 1;
        let path = if prefix.is_empty() {
            element.name.clone()
        } else {
            format!("{prefix}.{}", element.name)
        };
        let is_group = element.num_children.is_some_and(|n| n > 0) || element.physical.is_none();
        if is_group {
            stack.push((children(element, &path)?, path));
            continue;
        }
        let physical = element
            .physical
            .and_then(|t| usize::try_from(t).ok())
            .and_then(|t| PHYSICAL.get(t))
            .ok_or_else(|| {
                format!(
                    "column `{path}` has physical type {:?}, not one of the format's",
                    element.physical
                )
            })?;
        let converted = element
            .converted
            .and_then(|t| usize::try_from(t).ok())
            .and_then(|t| CONVERTED.get(t))
            .map(|name| (*name).to_owned());
        columns.push(ColumnInfo {
            name: path,
            physical_type: (*physical).to_owned(),
            logical_type: element.logical.clone().or(converted),
        });
    }
    if next < schema.len() {
        return Err(format!(
            "the schema lists {} elements, its groups hold {next}",
            schema.len()
        ));
    }
    Ok(columns)
}
