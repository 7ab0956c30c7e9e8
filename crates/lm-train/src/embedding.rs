//! Sentence embeddings from a BERT-family encoder, as sentence-transformers computes them: the
//! text tokenized with the file's own post-processor (`[CLS] … [SEP]`), the encoder's last
//! hidden states pooled as `1_Pooling/config.json` says (mean over the tokens by default, or
//! the `[CLS]` state, or the maximum), then L2-normalized when `modules.json` lists a
//! `Normalize` module.

use std::path::Path;

use candle_core::{Device, Tensor, D};
use lm_models::bert::Bert;
use lm_models::StepContext;

use crate::error::{io_err, Result, TrainError};
use crate::tokenizer::TextTokenizer;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token states.
    Mean,
    /// The state of the first token (`[CLS]`).
    Cls,
    /// The elementwise maximum over the tokens.
    Max,
}

/// The pooling and normalization a sentence-transformers directory declares (mean, not
/// normalized, when it declares none).
pub fn pooling_of(dir: &Path) -> Result<(Pooling, bool)> {
    let path = dir.join("1_Pooling/config.json");
    let pooling = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                    path: path.clone(),
                    problem: format!("not a pooling config: {e}"),
                })?;
            let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
            if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_max_tokens") {
                Pooling::Max
            } else {
                Pooling::Mean
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pooling::Mean,
        Err(e) => return Err(io_err(&path)(e)),
    };
    let normalize = std::fs::read_to_string(dir.join("modules.json"))
        .map(|m| m.contains("Normalize"))
        .unwrap_or(false);
    Ok((pooling, normalize))
}

/// The embedding of `text` by the BERT model `model` names (a sentence-transformers or
/// HuggingFace BERT directory, a BERT run or one of its checkpoints: [`crate::model_ref`]).
pub fn sentence_embedding(model: &Path, text: &str, device: &Device) -> Result<Vec<f32>> {
    let model_ref = crate::model_ref::ModelRef::parse(model)?;
    let dir = &model_ref.weights_dir()?;
    let tokenizer = TextTokenizer::load(&model_ref.tokenizer_file()?)?;
    let (model, _, _) = Bert::from_hf_dir(dir, device)?;
    let mut ids = tokenizer.encode_for_model(text)?;
    ids.truncate(model.config().max_position_embeddings);
    if ids.is_empty() {
        return Err(TrainError::Corpus {
            corpus: "text to embed".into(),
            problem: "no tokens".into(),
        });
    }
    let states = model
        .encode(
            &Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?,
            None,
            None,
            &StepContext::EVAL,
        )?
        .sequence
        .squeeze(0)?;
    let (pooling, normalize) = pooling_of(dir)?;
    let v = match pooling {
        Pooling::Mean => states.mean(0)?,
        Pooling::Cls => states.get(0)?,
        Pooling::Max => states.max(0)?,
    };
    let v = if normalize {
        v.broadcast_div(
            &v.sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?,
        )?
    } else {
        v
    };
    Ok(v.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_cls_and_normalized_pooling_follow_the_definition() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let lines: Vec<&str> = crate::data::SHAKESPEARE[..5_000].lines().collect();
        let tok = TextTokenizer::train(
            crate::tokenizer::TokenizerKind::Wordpiece,
            crate::config::Family::named("bert").unwrap(),
            200,
            &lines,
        )
        .unwrap();
        tok.save(&dir.join("tokenizer.json")).unwrap();
        let cfg = lm_models::bert::BertConfig::tiny(tok.vocab_size());
        let (model, store) = Bert::init(&cfg, 4, &Device::Cpu).unwrap();
        model.save_hf_dir(&store, dir).unwrap();
        let text = "First Citizen";
        let ids = tok.encode_for_model(text).unwrap();
        let states = model
            .encode(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
                None,
                &StepContext::EVAL,
            )
            .unwrap()
            .sequence
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let d = states[0].len();
        let mean: Vec<f32> = (0..d)
            .map(|j| states.iter().map(|r| r[j]).sum::<f32>() / states.len() as f32)
            .collect();
        let got = sentence_embedding(dir, text, &Device::Cpu).unwrap();
        assert!(got.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-6));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(
            dir.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"type": "sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        let got = sentence_embedding(dir, text, &Device::Cpu).unwrap();
        let norm = states[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(got
            .iter()
            .zip(&states[0])
            .all(|(a, b)| (a - b / norm).abs() < 1e-6));
    }
}
