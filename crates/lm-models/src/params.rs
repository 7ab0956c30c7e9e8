//! The parameter store: every trainable tensor of a model, by its HuggingFace name.
//!
//! [`ParamStore`] is a candle `VarBuilder` backend. A model asks for each parameter with an
//! [`Init`] hint, as candle models do (`vb.pp("attn").get_with_hints(..)`); the store creates it
//! on first request with lm-optim's keyed initializers — so the values depend only on the seed
//! and the name — or returns the existing one. Loading a checkpoint overwrites the values in place
//! after checking every name and shape.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};

/// Named trainable parameters, shared between a model and its optimizer.
#[derive(Clone, Debug)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
    /// At most this many scalars in all, and the file that sets the limit (see
    /// [`ParamStore::with_element_limit`]).
    element_limit: Option<(usize, Arc<Path>)>,
}

impl ParamStore {
    /// An empty store whose initial values will derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
            element_limit: None,
        }
    }

    /// An empty store that refuses to create parameters beyond `limit` scalars in all: a model
    /// built from a file's configuration for weights from another file allocates no more than
    /// those weights can fill (see [`crate::hf`]), whatever sizes the configuration declares.
    pub fn with_element_limit(seed: u64, limit: usize, weights: &Path) -> Self {
        Self {
            element_limit: Some((limit, weights.into())),
            ..Self::new(seed)
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked while holding it; the map is intact.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `VarBuilder` over this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// One parameter by name.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.lock().values().map(|v| v.elem_count()).sum()
    }

    /// The parameters as tensors, for saving.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes all parameters to a safetensors file (via a temporary file and a rename, so an
    /// existing file is never left half-written).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        self.save_safetensors_where(path, |_| true)
    }

    /// Writes the parameters whose names `keep` holds for to a safetensors file, as
    /// [`ParamStore::save_safetensors`] does (one shard of a sharded checkpoint).
    pub fn save_safetensors_where(&self, path: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .tensors()
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| ModelError::BadFile {
            path: tmp.clone(),
            problem: format!("cannot write: {e}"),
        })?;
        std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Like [`ParamStore::load_safetensors`] with names as they are, except that parameters for
    /// which `optional` holds may be absent from the file: they keep their initial values and
    /// their names are returned (e.g. new task heads).
    pub fn load_safetensors_partial(
        &self,
        path: &Path,
        optional: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        self.load_safetensors_layout(path, "", optional)
    }

    /// Loads a checkpoint saved with or without the model's base prefix, as transformers'
    /// `base_model_prefix` does: a file tensor `n` that is not a parameter while `prefix + n` is
    /// (a base-model checkpoint, e.g. `BertModel`'s `embeddings.…` for our `bert.embeddings.…`)
    /// loads into `prefix + n`, and `prefix + n` in the file loads into a parameter `n`; tensors
    /// the model lacks (another head) are ignored. Parameters for which `optional` holds may be
    /// absent: they keep their initial values and their names are returned.
    pub fn load_safetensors_layout(
        &self,
        path: &Path,
        prefix: &str,
        optional: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let names: std::collections::HashSet<String> = self.lock().keys().cloned().collect();
        let mut file: Vec<String> = vec![];
        for part in crate::weights::files(path)? {
            let bytes = read(&part)?;
            file.extend(
                safetensors_names(&bytes).map_err(|problem| ModelError::BadFile {
                    path: part.clone(),
                    problem,
                })?,
            );
        }
        let ours = |n: &str| -> Option<String> {
            if names.contains(n) {
                return Some(n.to_string());
            }
            if prefix.is_empty() {
                return None;
            }
            let with = format!("{prefix}{n}");
            if names.contains(&with) {
                return Some(with);
            }
            n.strip_prefix(prefix)
                .filter(|m| names.contains(*m))
                .map(String::from)
        };
        let present: std::collections::HashSet<String> =
            file.iter().filter_map(|n| ours(n)).collect();
        let mut missing: Vec<String> = names
            .iter()
            .filter(|n| !present.contains(*n) && optional(n))
            .cloned()
            .collect();
        missing.sort();
        // Load through a view without the optional-and-missing parameters (same Vars otherwise).
        let view: BTreeMap<String, Var> = self
            .lock()
            .iter()
            .filter(|(k, _)| !missing.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ParamStore {
            vars: Arc::new(Mutex::new(view)),
            seed: self.seed,
            element_limit: None,
        }
        .load_safetensors(path, ours)?;
        Ok(missing)
    }

    /// Overwrites every parameter with the tensor of the same name in `path`, after checking
    /// that each exists with the right shape. `rename` maps a file name to a parameter name
    /// (or `None` to skip it), for layouts that differ from ours. `path` names a
    /// `model.safetensors`; where it is absent, the sharded layout's index beside it names the
    /// files to read ([`crate::weights`]), and a tensor in two of them is refused.
    pub fn load_safetensors(
        &self,
        path: &Path,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<()> {
        let device = self
            .lock()
            .values()
            .next()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let parts = crate::weights::files(path)?;
        let mut loaded: BTreeMap<String, Tensor> = BTreeMap::new();
        for part in &parts {
            let bytes = read(part)?;
            let raw = candle_core::safetensors::load_buffer(&bytes, &device).map_err(|e| {
                ModelError::BadFile {
                    path: part.clone(),
                    problem: format!("not a readable safetensors file ({e})"),
                }
            })?;
            for (k, v) in raw {
                let Some(name) = rename(&k) else { continue };
                if loaded.insert(name, v).is_some() {
                    return Err(ModelError::BadFile {
                        path: part.clone(),
                        problem: format!("tensor {k} is in another of the index's files too"),
                    });
                }
            }
        }
        // Errors name the file a user would look at: the one file, or the index.
        let path = match parts.as_slice() {
            [one] => one.clone(),
            _ => crate::weights::index_of(path),
        };
        let path = path.as_path();
        let vars = self.lock();
        // Check everything before touching anything, so a bad file changes nothing.
        for (name, var) in vars.iter() {
            let t = loaded.get(name).ok_or_else(|| ModelError::MissingTensor {
                file: path.to_path_buf(),
                name: name.clone(),
                expected: var.dims().to_vec(),
            })?;
            if t.dims() != var.dims() {
                return Err(ModelError::ShapeMismatch {
                    file: path.to_path_buf(),
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
        }
        for (name, var) in vars.iter() {
            var.set(&loaded[name].to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// A new parameter's variable, its values made in one buffer that becomes the variable's
    /// own (f32 on the CPU), instead of the drawn values, a shifted copy and the variable's
    /// copy: two temporaries per parameter that an allocator keeping what it frees
    /// (`lm_kernels::memory::keep_freed_memory`) would hold (20 MiB of GPT-2 small's resident
    /// set after its initialization, docs/performance.md).
    fn create(
        &self,
        shape: &Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Var> {
        let n = shape.elem_count();
        // Each value as candle's `affine(1, shift)` made it from the drawn one before:
        // `v · 1 + shift` in f32, where `v · 1 = v` exactly.
        let shifted = |mut v: Vec<f32>, shift: f64| {
            let shift = shift as f32;
            v.iter_mut().for_each(|x| *x += shift);
            v
        };
        let values = match init {
            // `1 · c + 0`, as `ones · c` made it (`+ 0` turns −0 into +0).
            Init::Const(c) => vec![c as f32 + 0.0; n],
            Init::Randn { mean, stdev } => shifted(
                lm_optim::init::normal_values(n, stdev, self.seed, name),
                mean,
            ),
            Init::Uniform { lo, up } => {
                let half = (up - lo) / 2.0;
                shifted(
                    lm_optim::init::uniform_values(n, half, self.seed, name),
                    lo + half,
                )
            }
            Init::Kaiming { .. } => {
                candle_core::bail!("parameter {name}: use an explicit Randn or Uniform init")
            }
        };
        if dtype == DType::F32 && device.is_cpu() {
            return Var::from_vec(values, shape.clone(), device);
        }
        Var::from_tensor(&Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)?)
    }
}

/// The bytes of a weight file; an error names it.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The tensor names in a safetensors buffer (from its JSON header).
fn safetensors_names(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    if bytes.len() < 8 {
        return Err("truncated safetensors file (no header)".into());
    }
    // INVARIANT: `bytes[..8]` is 8 bytes long (checked just above).
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..n.checked_add(8)?))
        .ok_or("truncated safetensors header")?;
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("bad safetensors header: {e}"))?;
    Ok(json
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default())
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(v) = self.lock().get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter {name}: shape {:?} requested, {:?} stored",
                    s.dims(),
                    v.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        if let Some((limit, weights)) = &self.element_limit {
            let held: usize = self.lock().values().map(|v| v.elem_count()).sum();
            let wanted = s.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if wanted
                .and_then(|w| w.checked_add(held))
                .is_none_or(|n| n > *limit)
            {
                candle_core::bail!(
                    "parameter {name} of shape {:?} would take the model past {limit} scalars, more than {} can hold: the configuration does not describe these weights",
                    s.dims(),
                    weights.display()
                );
            }
        }
        let var = self.create(&s, name, h, dtype, dev)?;
        let t = var.as_tensor().clone();
        self.lock().insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter {name} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each initializer gives, bit for bit, what candle's ops on the drawn tensor gave before
    /// the values were made in place (`normal + mean`, `uniform + (lo + half)`, `ones · c`), in
    /// f32 and converted to bf16.
    #[test]
    fn initial_values_equal_the_tensor_ops_they_replace() {
        let cpu = Device::Cpu;
        let store = ParamStore::new(7);
        let bits = |t: &Tensor| -> Vec<u32> {
            let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        // Each initializer and the ops it replaces, for a parameter `name`.
        type Reference = fn(&str) -> Tensor;
        let cases: [(Init, Reference); 4] = [
            (
                Init::Randn {
                    mean: 0.5,
                    stdev: 0.02,
                },
                |n| {
                    let t = lm_optim::init::normal((3, 5), 0.02, 7, n, DType::F32, &Device::Cpu);
                    (t.unwrap() + 0.5).unwrap()
                },
            ),
            (Init::Uniform { lo: -0.1, up: 0.3 }, |n| {
                let t = lm_optim::init::uniform((3, 5), 0.2, 7, n, DType::F32, &Device::Cpu);
                (t.unwrap() + 0.1).unwrap()
            }),
            (Init::Const(-0.0), |_| {
                (Tensor::ones((3, 5), DType::F32, &Device::Cpu).unwrap() * -0.0).unwrap()
            }),
            (Init::Const(2.5), |_| {
                (Tensor::ones((3, 5), DType::F32, &Device::Cpu).unwrap() * 2.5).unwrap()
            }),
        ];
        for dtype in [DType::F32, DType::BF16] {
            let vb = store.var_builder(dtype, &cpu);
            for (i, (init, reference)) in cases.iter().enumerate() {
                let name = format!("p{i}{dtype:?}");
                let got = vb.get_with_hints((3, 5), &name, *init).unwrap();
                let want = reference(&name).to_dtype(dtype).unwrap();
                assert_eq!(got.dtype(), dtype);
                assert_eq!(bits(&got), bits(&want), "{name}");
            }
        }
    }
}
