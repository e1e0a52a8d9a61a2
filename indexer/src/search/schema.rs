//! The tantivy schema of the search index and the mapping of [`SearchDocument`]s onto it.
//!
//! | field | holds | used for |
//! | --- | --- | --- |
//! | `key` | `kind:id`, exact | replacing and deleting a document |
//! | `kind` `vehicle` `city` `weather` `software` `tag` | keywords; indexed, fast | filter, facet |
//! | `pipeline` `status` `topic` `id` `label` `drive` | keywords; indexed | `field:` filters |
//! | `kind_rank`, `id_sort` | kind's declaration order, the exact id; fast | hits and their order |
//! | `text` | every free-text value, one value each (a position gap between them) | free text |
//! | `title` | id and title | ranking boost |
//! | `text_pairs`, `title_pairs` | the same values as word pairs (`cut in`) | phrases |
//! | `time` | start time, microseconds; fast | `after:` / `before:`, time order |
//! | `size_bytes` | size; fast | future sorting |
//!
//! Nothing is stored: hits are read from fast fields. The schema (tokenizer name included)
//! is compared with the one on disk when opening, so any change here makes old indexes fail
//! with `Corrupt` and get rebuilt.

use std::collections::BTreeSet;

use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, NumericOptions, Schema,
    TextFieldIndexing, TextOptions, FAST,
};
use tantivy::TantivyDocument;

use super::compile::index_time;
use super::query::QueryField;
use super::tokenizer::{keyword, PAIR_TOKENIZER, WORD_TOKENIZER};
use super::{EntityKind, SearchDocument};

pub(crate) const KIND: &str = "kind";
pub(crate) const KIND_RANK: &str = "kind_rank";
pub(crate) const ID_SORT: &str = "id_sort";
pub(crate) const TIME: &str = "time";

/// Handles of every field of the schema.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    pub key: Field,
    pub kind: Field,
    pub kind_rank: Field,
    pub id_sort: Field,
    pub id: Field,
    pub vehicle: Field,
    pub city: Field,
    pub weather: Field,
    pub software: Field,
    pub tag: Field,
    pub pipeline: Field,
    pub status: Field,
    pub topic: Field,
    pub label: Field,
    pub drive: Field,
    pub text: Field,
    pub title: Field,
    pub text_pairs: Field,
    pub title_pairs: Field,
    pub time: Field,
    pub size_bytes: Field,
}

/// The schema and its field handles.
pub(crate) fn build() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let exact = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    let faceted = exact.clone().set_fast(None);
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(WORD_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(true),
    );
    let pairs = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(PAIR_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(true),
    );
    let fields = Fields {
        key: b.add_text_field("key", exact.clone()),
        kind: b.add_text_field(KIND, faceted.clone()),
        kind_rank: b.add_u64_field(KIND_RANK, FAST),
        id_sort: b.add_text_field(ID_SORT, TextOptions::default().set_fast(None)),
        id: b.add_text_field("id", exact.clone()),
        vehicle: b.add_text_field("vehicle", faceted.clone()),
        city: b.add_text_field("city", faceted.clone()),
        weather: b.add_text_field("weather", faceted.clone()),
        software: b.add_text_field("software", faceted.clone()),
        tag: b.add_text_field("tag", faceted),
        pipeline: b.add_text_field("pipeline", exact.clone()),
        status: b.add_text_field("status", exact.clone()),
        topic: b.add_text_field("topic", exact.clone()),
        label: b.add_text_field("label", exact.clone()),
        drive: b.add_text_field("drive", exact),
        text: b.add_text_field("text", words.clone()),
        title: b.add_text_field("title", words),
        text_pairs: b.add_text_field("text_pairs", pairs.clone()),
        title_pairs: b.add_text_field("title_pairs", pairs),
        time: b.add_date_field(
            TIME,
            DateOptions::default()
                .set_fast()
                .set_precision(DateTimePrecision::Microseconds),
        ),
        size_bytes: b.add_i64_field("size_bytes", NumericOptions::default().set_fast()),
    };
    (b.build(), fields)
}

/// The exact identity of a document: kind names contain no `:`, so this is unambiguous.
pub(crate) fn key(kind: EntityKind, id: &str) -> String {
    format!("{}:{id}", kind.as_str())
}

/// Position of `kind` in [`EntityKind::ALL`]: the tie-break order of hits.
pub(crate) fn kind_rank(kind: EntityKind) -> u64 {
    EntityKind::ALL
        .iter()
        .position(|k| *k == kind)
        .map_or(u64::MAX, |rank| rank as u64)
}

impl Fields {
    /// The indexed field a `field:value` term looks at.
    pub(crate) fn keyword(&self, field: QueryField) -> Field {
        match field {
            QueryField::Kind => self.kind,
            QueryField::Vehicle => self.vehicle,
            QueryField::City => self.city,
            QueryField::Weather => self.weather,
            QueryField::Tag => self.tag,
            QueryField::Software => self.software,
            QueryField::Pipeline => self.pipeline,
            QueryField::Status => self.status,
            QueryField::Topic => self.topic,
            QueryField::Id => self.id,
            QueryField::Label => self.label,
            QueryField::Drive => self.drive,
        }
    }

    pub(crate) fn document(&self, d: &SearchDocument) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_text(self.key, key(d.kind, &d.id));
        doc.add_text(self.kind, d.kind.as_str());
        doc.add_u64(self.kind_rank, kind_rank(d.kind));
        doc.add_text(self.id_sort, &d.id);

        let single = [
            (self.id, Some(d.id.as_str())),
            (self.vehicle, d.vehicle.as_deref()),
            (self.city, d.city.as_deref()),
            (self.weather, d.weather.as_deref()),
            (self.software, d.software.as_deref()),
            (self.pipeline, d.pipeline.as_deref()),
            (self.status, d.status.as_deref()),
            (self.drive, d.drive_id.as_deref()),
        ];
        for (field, value) in single {
            if let Some(value) = value.and_then(keyword) {
                doc.add_text(field, value);
            }
        }
        // Multi-valued keywords: each distinct value once, so facet counts count documents.
        for (field, values) in [
            (self.tag, &d.tags),
            (self.label, &d.labels),
            (self.topic, &d.topics),
        ] {
            let distinct: BTreeSet<String> = values.iter().filter_map(|v| keyword(v)).collect();
            for value in distinct {
                doc.add_text(field, value);
            }
        }

        for value in [d.id.as_str(), d.title.as_str()] {
            if !value.trim().is_empty() {
                doc.add_text(self.title, value);
                doc.add_text(self.title_pairs, value);
            }
        }
        let optional_text = [
            &d.vehicle,
            &d.city,
            &d.route,
            &d.weather,
            &d.software,
            &d.pipeline,
            &d.commit,
            &d.status,
            &d.description,
        ];
        let text = [d.id.as_str(), d.title.as_str()]
            .into_iter()
            .chain(optional_text.into_iter().filter_map(|v| v.as_deref()))
            .chain(d.tags.iter().map(String::as_str))
            .chain(d.labels.iter().map(String::as_str))
            .chain(d.topics.iter().map(String::as_str))
            .chain(d.extra_text.iter().map(String::as_str));
        for value in text {
            if !value.trim().is_empty() {
                doc.add_text(self.text, value);
                doc.add_text(self.text_pairs, value);
            }
        }

        if let Some(time) = d.time {
            doc.add_date(self.time, index_time(time));
        }
        if let Some(size) = d.size_bytes {
            doc.add_i64(self.size_bytes, size);
        }
        doc
    }
}
