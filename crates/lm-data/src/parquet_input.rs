//! Parquet input: the text column of each row, read row group by row group in batches, so
//! memory holds one batch of values, not the file.

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};

use std::path::Path;

use crate::error::{io_err, DataError, Result};

/// Values read per call of the column reader.
const BATCH: usize = 1024;

fn parquet_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> DataError + '_ {
    move |e| DataError::Input {
        path: path.to_path_buf(),
        problem: format!("Parquet: {e}"),
    }
}

/// What a Parquet read skipped: null or blank values, and values that are not UTF-8.
#[derive(Default)]
pub(crate) struct ParquetSkips {
    pub empty: u64,
    pub invalid_utf8: u64,
}

/// Gives the non-blank values of column `text_field` of `path` to `sink`, in row order.
pub(crate) fn read_parquet(
    path: &Path,
    text_field: &str,
    skip_invalid: bool,
    skipped: &mut ParquetSkips,
    sink: &mut dyn FnMut(String, u64) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_err(path))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let columns: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let Some(col) = columns.iter().position(|c| c == text_field) else {
        return Err(DataError::MissingField {
            path: path.to_path_buf(),
            location: String::new(),
            field: text_field.to_string(),
            hint: format!(" (its columns are {columns:?}; pass --text-field NAME)"),
        });
    };
    let descr = schema.column(col);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() > 0 {
        return Err(DataError::Input {
            path: path.to_path_buf(),
            problem: format!(
                "column {:?} is {:?}{}, not a string column",
                text_field,
                descr.physical_type(),
                if descr.max_rep_level() > 0 {
                    " (repeated)"
                } else {
                    ""
                }
            ),
        });
    }
    let nullable = descr.max_def_level() > 0;
    let mut values = Vec::with_capacity(BATCH);
    let mut defs = Vec::with_capacity(BATCH);
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(parquet_err(path))?;
        let ColumnReader::ByteArrayColumnReader(mut column) =
            group.get_column_reader(col).map_err(parquet_err(path))?
        else {
            return Err(DataError::Input {
                path: path.to_path_buf(),
                problem: format!("column {:?} is not a byte-array column", text_field),
            });
        };
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = column
                .read_records(BATCH, nullable.then_some(&mut defs), None, &mut values)
                .map_err(parquet_err(path))?;
            if records == 0 {
                break;
            }
            let nulls = if nullable {
                defs.iter().filter(|&&d| d == 0).count()
            } else {
                0
            };
            skipped.empty += nulls as u64;
            for v in values.drain(..) {
                match std::str::from_utf8(v.data()) {
                    Ok(t) if t.trim().is_empty() => skipped.empty += 1,
                    Ok(t) => sink(t.to_string(), 0)?,
                    Err(_) if skip_invalid => skipped.invalid_utf8 += 1,
                    Err(e) => {
                        return Err(DataError::Input {
                            path: path.to_path_buf(),
                            problem: format!(
                                "row group {g}: a value of column {:?} is not UTF-8 ({e})",
                                text_field
                            ),
                        })
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes `texts` as a Parquet file with one required string column `column` (snappy, row
/// groups of `rows_per_group`): for fixtures and benchmarks.
pub fn write_parquet_texts(
    path: &std::path::Path,
    column: &str,
    texts: &[String],
    rows_per_group: usize,
) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let to_err = |e: parquet::errors::ParquetError| DataError::Input {
        path: path.to_path_buf(),
        problem: format!("Parquet: {e}"),
    };
    let schema = parquet::schema::parser::parse_message_type(&format!(
        "message corpus {{ REQUIRED BYTE_ARRAY {column} (UTF8); }}"
    ))
    .map_err(to_err)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let tmp = crate::atomic::tmp_path(path);
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut writer = SerializedFileWriter::new(
        file,
        std::sync::Arc::new(schema),
        std::sync::Arc::new(props),
    )
    .map_err(to_err)?;
    for chunk in texts.chunks(rows_per_group.max(1)) {
        let mut group = writer.next_row_group().map_err(to_err)?;
        while let Some(mut col) = group.next_column().map_err(to_err)? {
            let values: Vec<ByteArray> =
                chunk.iter().map(|t| ByteArray::from(t.as_str())).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .map_err(to_err)?;
            col.close().map_err(to_err)?;
        }
        group.close().map_err(to_err)?;
    }
    writer.close().map_err(to_err)?;
    crate::atomic::rename_synced(&tmp, path)
}
