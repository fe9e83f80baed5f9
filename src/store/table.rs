use super::artifact::{ArtifactId, ArtifactKind, Store};
use super::error::{IoContext, StoreError};
use super::lineage::{Lineage, HF_KEY, LINEAGE_KEY};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A Parquet artifact read back: its rows, its lineage and where it lives.
#[derive(Debug, Clone)]
pub struct Table {
    pub id: ArtifactId,
    pub path: PathBuf,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub lineage: Option<Lineage>,
    /// The Hugging Face `datasets` features, if the writer gave them.
    pub hf_features: Option<serde_json::Value>,
}

impl Table {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows as one batch.
    pub fn concat(&self) -> Result<RecordBatch, StoreError> {
        arrow::compute::concat_batches(&self.schema, &self.batches).map_err(|source| StoreError::Arrow { path: self.path.clone(), source })
    }
}

/// Rows per row group: small for tables of images (Hugging Face's habit for binary data), large otherwise.
fn row_group_rows(schema: &SchemaRef) -> usize {
    let has_binary = schema.fields().iter().any(|f| contains_binary(f.data_type()));
    if has_binary {
        100
    } else {
        64 * 1024
    }
}

fn contains_binary(t: &DataType) -> bool {
    match t {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => true,
        DataType::Struct(fields) => fields.iter().any(|f| contains_binary(f.data_type())),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => contains_binary(f.data_type()),
        _ => false,
    }
}

impl Store {
    /// Writes record batches as one Parquet artifact with lineage (and HF features) in its metadata.
    /// The bytes depend only on the rows and the metadata, so identical inputs give identical ids.
    pub fn put_table(
        &self,
        schema: SchemaRef,
        batches: &[RecordBatch],
        lineage: &Lineage,
        hf_features: Option<&serde_json::Value>,
    ) -> Result<ArtifactId, StoreError> {
        let mut lineage = lineage.clone();
        // The bytes (and so the name) must not depend on when they were written.
        lineage.created = None;
        lineage.rows = Some(batches.iter().map(|b| b.num_rows() as u64).sum());
        let mut kv = vec![KeyValue::new(LINEAGE_KEY.to_string(), serde_json::to_string(&lineage).expect("lineage serializes"))];
        if let Some(features) = hf_features {
            let hf = serde_json::json!({ "info": { "features": features } });
            kv.push(KeyValue::new(HF_KEY.to_string(), hf.to_string()));
        }
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
            .set_max_row_group_row_count(Some(row_group_rows(&schema)))
            .set_created_by(Lineage::tool_version())
            .set_key_value_metadata(Some(kv))
            .build();
        let at = self.objects_dir();
        self.put_with(ArtifactKind::Parquet, None, |w| {
            let mut writer =
                ArrowWriter::try_new(w, schema.clone(), Some(props)).map_err(|source| StoreError::Parquet { path: at.clone(), source })?;
            for b in batches {
                writer.write(b).map_err(|source| StoreError::Parquet { path: at.clone(), source })?;
            }
            writer.close().map_err(|source| StoreError::Parquet { path: at.clone(), source })?;
            Ok(())
        })
    }

    /// Reads a Parquet artifact by id after checking its bytes against its name.
    pub fn read_table(&self, id: &ArtifactId) -> Result<Table, StoreError> {
        let path = self.path_of(id, ArtifactKind::Parquet);
        if !path.exists() {
            return Err(StoreError::Missing { id: id.to_string(), path });
        }
        self.check(id, &path)?;
        read_parquet(&path, id.clone())
    }
}

/// Reads any Parquet file (an artifact, or a file offered for import) with its metadata.
pub fn read_parquet(path: &Path, id: ArtifactId) -> Result<Table, StoreError> {
    let file = File::open(path).at(path)?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| StoreError::Parquet { path: path.to_path_buf(), source })?;
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    let get = |key: &str| kv.iter().find(|e| e.key == key).and_then(|e| e.value.clone());
    let lineage = get(LINEAGE_KEY)
        .map(|s| serde_json::from_str::<Lineage>(&s))
        .transpose()
        .map_err(|e| StoreError::Lineage { path: path.to_path_buf(), msg: e.to_string() })?;
    let hf_features = get(HF_KEY)
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("info").and_then(|i| i.get("features")).cloned());
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|source| StoreError::Parquet { path: path.to_path_buf(), source })?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|source| StoreError::Arrow { path: path.to_path_buf(), source })?;
    Ok(Table { id, path: path.to_path_buf(), schema, batches, lineage, hf_features })
}

/// Checks that a table has the columns a reader expects, with their types (nested field names and
/// nullability aside: another Arrow writer names a list's items `element` where we write `item`).
pub fn expect_columns(table: &Table, expected: &[(&str, DataType)]) -> Result<(), StoreError> {
    for (name, ty) in expected {
        match table.schema.field_with_name(name) {
            Ok(f) if f.data_type().equals_datatype(ty) => {}
            Ok(f) => {
                return Err(StoreError::Schema {
                    path: table.path.clone(),
                    column: name.to_string(),
                    expected: format!("{ty}"),
                    found: format!("{}", f.data_type()),
                })
            }
            Err(_) => {
                return Err(StoreError::Schema {
                    path: table.path.clone(),
                    column: name.to_string(),
                    expected: format!("{ty}"),
                    found: "no such column".into(),
                })
            }
        }
    }
    Ok(())
}

/// Checks that a table has every column of `schema` (the one its producing stage writes), each of its
/// type, as [`expect_columns`]; other columns may follow.
pub fn expect_schema(table: &Table, schema: &Schema) -> Result<(), StoreError> {
    let expected: Vec<(&str, DataType)> = schema.fields().iter().map(|f| (f.name().as_str(), f.data_type().clone())).collect();
    expect_columns(table, &expected)
}
