//! Valid Parquet footers that newer writers produce: geospatial logical types (format 2.11),
//! a logical type this reader does not know, the IEEE-754 total column order, legacy row
//! groups without `total_byte_size`; and an encrypted footer, which must be named as such.
//!
//! The footers are written here with a small Thrift compact-protocol writer, field by field
//! as the Parquet format's `parquet.thrift` numbers them, independently of the reader under
//! test (which decodes them with its own bounded reader). The files hold no data pages: a
//! footer is all the catalog reads.

use bytes::Bytes;
use milepost_indexer::metadata::{read_parquet_footer, MetadataErrorKind};

// Compact protocol types.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I32: u8 = 5;
const I64: u8 = 6;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const STRUCT: u8 = 12;

// Parquet physical types and field repetitions.
const INT32: i32 = 1;
const INT64: i32 = 2;
const DOUBLE: i32 = 5;
const BYTE_ARRAY: i32 = 6;
const REQUIRED: i32 = 0;
const OPTIONAL: i32 = 1;

/// A Thrift compact-protocol writer: just what a footer needs.
#[derive(Default)]
struct Compact {
    out: Vec<u8>,
    last: Vec<i16>,
    current: i16,
}

impl Compact {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn field(&mut self, id: i16, ty: u8) -> &mut Self {
        let delta = id - self.current;
        if (1..=15).contains(&delta) {
            self.out.push(((delta as u8) << 4) | ty);
        } else {
            self.out.push(ty);
            self.zigzag(i64::from(id));
        }
        self.current = id;
        self
    }

    fn i32(&mut self, id: i16, v: i32) -> &mut Self {
        self.field(id, I32).zigzag(i64::from(v));
        self
    }

    fn i64(&mut self, id: i16, v: i64) -> &mut Self {
        self.field(id, I64).zigzag(v);
        self
    }

    fn byte(&mut self, id: i16, v: i8) -> &mut Self {
        self.field(id, BYTE).out.push(v as u8);
        self
    }

    fn bool(&mut self, id: i16, v: bool) -> &mut Self {
        self.field(id, if v { BOOL_TRUE } else { BOOL_FALSE })
    }

    fn string(&mut self, id: i16, v: &str) -> &mut Self {
        self.field(id, BINARY).varint(v.len() as u64);
        self.out.extend_from_slice(v.as_bytes());
        self
    }

    /// Opens a struct-valued field (or a list element when `id` is `None`).
    fn open(&mut self, id: Option<i16>) -> &mut Self {
        if let Some(id) = id {
            self.field(id, STRUCT);
        }
        self.last.push(self.current);
        self.current = 0;
        self
    }

    fn close(&mut self) -> &mut Self {
        self.out.push(0);
        self.current = self.last.pop().expect("an open struct");
        self
    }

    fn list(&mut self, id: i16, element: u8, len: usize) -> &mut Self {
        self.field(id, LIST);
        if len < 15 {
            self.out.push(((len as u8) << 4) | element);
        } else {
            self.out.push(0xf0 | element);
            self.varint(len as u64);
        }
        self
    }
}

/// One schema element: a leaf (with a physical type) or a group (with children).
struct Element<'a> {
    name: &'a str,
    physical: Option<i32>,
    children: Option<i32>,
    converted: Option<i32>,
    /// Writes the `logicalType` union's one field into the open union struct.
    logical: Option<&'a dyn Fn(&mut Compact)>,
}

fn leaf<'a>(name: &'a str, physical: i32) -> Element<'a> {
    Element {
        name,
        physical: Some(physical),
        children: None,
        converted: None,
        logical: None,
    }
}

/// A footer: the schema, `rows`, `row_groups` row groups (written as legacy parquet-mr did
/// when `legacy`: no `total_byte_size`), optional column orders, then wrapped into a file.
fn parquet_file(
    schema: &[Element<'_>],
    rows: i64,
    row_groups: usize,
    legacy: bool,
    column_orders: Option<&dyn Fn(&mut Compact)>,
) -> Bytes {
    let mut w = Compact::default();
    w.open(None); // FileMetaData
    w.i32(1, 2); // version
    w.list(2, STRUCT, schema.len() + 1);
    // The root's children: the elements that are no group's child.
    let nested: i32 = schema.iter().filter_map(|e| e.children).sum();
    let top_level = (schema.len() as i32 - nested).max(1);
    w.open(None).string(4, "schema").i32(5, top_level).close();
    for element in schema {
        w.open(None);
        if let Some(physical) = element.physical {
            w.i32(1, physical);
        }
        w.i32(
            3,
            if element.physical.is_some() {
                OPTIONAL
            } else {
                REQUIRED
            },
        );
        w.string(4, element.name);
        if let Some(children) = element.children {
            w.i32(5, children);
        }
        if let Some(converted) = element.converted {
            w.i32(6, converted);
        }
        if let Some(logical) = element.logical {
            w.open(Some(10));
            logical(&mut w);
            w.close();
        }
        w.close();
    }
    w.i64(3, rows);
    w.list(4, STRUCT, row_groups);
    for _ in 0..row_groups {
        w.open(None);
        w.list(1, STRUCT, 0); // columns
        if !legacy {
            w.i64(2, 0); // total_byte_size
        }
        w.i64(3, rows / row_groups as i64);
        w.close();
    }
    w.string(6, "milepost test footer");
    if let Some(orders) = column_orders {
        orders(&mut w);
    }
    w.close();
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(&w.out);
    file.extend_from_slice(&(w.out.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    Bytes::from(file)
}

fn columns(
    summary: &milepost_indexer::metadata::ParquetSummary,
) -> Vec<(String, String, Option<String>)> {
    summary
        .columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.physical_type.clone(),
                c.logical_type.clone(),
            )
        })
        .collect()
}

fn col(name: &str, physical: &str, logical: Option<&str>) -> (String, String, Option<String>) {
    (
        name.to_owned(),
        physical.to_owned(),
        logical.map(str::to_owned),
    )
}

#[tokio::test]
async fn geospatial_logical_types_are_described() {
    let geometry = |w: &mut Compact| {
        w.open(Some(17)).string(1, "OGC:CRS84").close();
    };
    let geography = |w: &mut Compact| {
        w.open(Some(18)).string(1, "OGC:CRS84").i32(2, 1).close(); // VINCENTY
    };
    let schema = [
        leaf("id", INT64),
        Element {
            logical: Some(&geometry),
            ..leaf("geometry", BYTE_ARRAY)
        },
        Element {
            logical: Some(&geography),
            ..leaf("route", BYTE_ARRAY)
        },
    ];
    let file = parquet_file(&schema, 12, 1, false, None);
    let summary = read_parquet_footer(&file)
        .await
        .expect("a geospatial footer is described");
    assert_eq!(summary.row_count, 12);
    assert_eq!(summary.row_groups, 1);
    assert_eq!(summary.created_by.as_deref(), Some("milepost test footer"));
    assert_eq!(
        columns(&summary),
        vec![
            col("id", "INT64", None),
            col("geometry", "BYTE_ARRAY", Some("GEOMETRY")),
            col("route", "BYTE_ARRAY", Some("GEOGRAPHY")),
        ]
    );
}

#[tokio::test]
async fn an_unknown_logical_type_reads_as_its_physical_type() {
    // A logical type from a later format version: union field 42, an empty struct.
    let future = |w: &mut Compact| {
        w.open(Some(42)).close();
    };
    let timestamp = |w: &mut Compact| {
        w.open(Some(8)).bool(1, true);
        w.open(Some(2)).open(Some(2)).close().close(); // unit: MICROS
        w.close();
    };
    let integer = |w: &mut Compact| {
        w.open(Some(10)).byte(1, 8).bool(2, false).close();
    };
    let schema = [
        Element {
            logical: Some(&future),
            ..leaf("reading", DOUBLE)
        },
        Element {
            logical: Some(&timestamp),
            ..leaf("at", INT64)
        },
        Element {
            logical: Some(&integer),
            ..leaf("gear", INT32)
        },
    ];
    let file = parquet_file(&schema, 3, 1, false, None);
    let summary = read_parquet_footer(&file)
        .await
        .expect("a footer with an unknown logical type is described");
    assert_eq!(
        columns(&summary),
        vec![
            col("reading", "DOUBLE", None),
            col("at", "INT64", Some("TIMESTAMP(MICROS,UTC)")),
            col("gear", "INT32", Some("INT(8,UNSIGNED)")),
        ]
    );
}

/// A nested schema: `value`, and `pose.frame` (UTF8 as legacy writers annotate it).
fn nested_schema() -> [Element<'static>; 3] {
    [
        leaf("value", DOUBLE),
        Element {
            name: "pose",
            physical: None,
            children: Some(1),
            converted: None,
            logical: None,
        },
        Element {
            converted: Some(0), // UTF8, no logical type
            ..leaf("frame", BYTE_ARRAY)
        },
    ]
}

fn nested_columns() -> Vec<(String, String, Option<String>)> {
    vec![
        col("value", "DOUBLE", None),
        col("pose.frame", "BYTE_ARRAY", Some("UTF8")),
    ]
}

#[tokio::test]
async fn the_ieee_754_column_order_is_read() {
    // column_orders (FileMetaData field 7): IEEE_754_TOTAL_ORDER (union field 2) for the
    // double, TYPE_ORDER (field 1) for the string.
    let orders = |w: &mut Compact| {
        w.list(7, STRUCT, 2);
        w.open(None).open(Some(2)).close().close();
        w.open(None).open(Some(1)).close().close();
    };
    let file = parquet_file(&nested_schema(), 40, 4, false, Some(&orders));
    let summary = read_parquet_footer(&file)
        .await
        .expect("IEEE-754 column orders are described");
    assert_eq!((summary.row_count, summary.row_groups), (40, 4));
    assert_eq!(columns(&summary), nested_columns());
}

#[tokio::test]
async fn legacy_row_groups_without_total_byte_size_are_read() {
    let file = parquet_file(&nested_schema(), 40, 4, true, None);
    let summary = read_parquet_footer(&file)
        .await
        .expect("legacy row groups are described");
    assert_eq!((summary.row_count, summary.row_groups), (40, 4));
    assert_eq!(columns(&summary), nested_columns());
}

#[tokio::test]
async fn an_encrypted_footer_is_named_as_encrypted() {
    // Parquet modular encryption with an encrypted footer: "PARE" at both ends.
    let mut file = b"PARE".to_vec();
    file.extend_from_slice(&[0x5a; 200]);
    file.extend_from_slice(&100u32.to_le_bytes());
    file.extend_from_slice(b"PARE");
    let err = read_parquet_footer(&Bytes::from(file))
        .await
        .expect_err("an encrypted footer cannot be described");
    assert_eq!(err.kind(), MetadataErrorKind::Malformed);
    let message = err.to_string();
    assert!(message.contains("encrypted footer"), "{message}");
    assert!(!message.contains("bad magic"), "{message}");
}

#[tokio::test]
async fn a_schema_that_lies_about_its_children_is_refused() {
    let schema = [Element {
        name: "group",
        physical: None,
        children: Some(5),
        converted: None,
        logical: None,
    }];
    let file = parquet_file(&schema, 0, 0, false, None);
    let err = read_parquet_footer(&file)
        .await
        .expect_err("a group with missing children");
    assert_eq!(err.kind(), MetadataErrorKind::Malformed);
    assert!(err.to_string().contains("schema"), "{err}");
}
