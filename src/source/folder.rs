//! Fleet files from a folder on disk.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use crate::{
    load::{Content, Input, Kind, Limits},
    source::Error,
};

/// Reads the fleet files under `root`; symbolic links are reported, not followed.
///
/// # Errors
/// When `root` or one of its folders cannot be listed, or a file cannot be read.
pub fn read_folder(root: &Path, limits: &Limits) -> Result<Vec<Input>, Error> {
    let mut inputs = Vec::new();
    walk(root, "", limits, &mut inputs)?;
    Ok(inputs)
}

fn walk(dir: &Path, prefix: &str, limits: &Limits, inputs: &mut Vec<Input>) -> Result<(), Error> {
    let folder_error = |source| Error::Folder {
        path: dir.to_path_buf(),
        source,
    };
    let entries = fs::read_dir(dir).map_err(folder_error)?;
    for entry in entries {
        let entry = entry.map_err(folder_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        let file_type = entry.file_type().map_err(folder_error)?;
        let is_fleet_file = Kind::of_path(&path).is_some();
        if file_type.is_dir() && !is_fleet_file {
            if Kind::is_fleet_folder(&path) {
                walk(&entry.path(), &format!("{path}/"), limits, inputs)?;
            }
            continue;
        }
        if !is_fleet_file {
            continue;
        }
        let content = if file_type.is_file() {
            read_file(&entry.path(), limits)?
        } else if file_type.is_dir() {
            Content::NotAFile("a directory")
        } else if file_type.is_symlink() {
            Content::NotAFile("a symbolic link (links are not followed)")
        } else {
            Content::NotAFile("a special file")
        };
        inputs.push(Input { path, content });
    }
    Ok(())
}

fn read_file(path: &Path, limits: &Limits) -> Result<Content, Error> {
    let file_error = |source| Error::File {
        path: PathBuf::from(path),
        source,
    };
    let file = fs::File::open(path).map_err(file_error)?;
    let size = file.metadata().map_err(file_error)?.len();
    if size > limits.max_file_bytes {
        return Ok(Content::TooLarge { size });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // Read at most one byte past the limit, in case the file grew since we looked.
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(file_error)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Ok(Content::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(Content::Bytes(bytes))
}
