use super::predict::gather_rows;
use super::*;

/// Rows of different lengths (one empty, ids up to 2^24 − 1) split 3 + 2 over two ranks come
/// back whole and in order on both; an id f32 cannot carry is refused.
#[test]
fn gathered_rows_are_every_ranks_rows_in_order() {
    let rows: Vec<Vec<u32>> = vec![
        vec![5, 6, 7],
        vec![],
        vec![(1 << 24) - 1],
        vec![1, 0, 2, 9, 4],
        vec![3],
    ];
    let out: Vec<Vec<Vec<u32>>> = lm_dist::ThreadRank::run(2, |c| {
        let mine = lm_dist::share(rows.len(), 2, c.rank());
        let local = rows[mine.clone()].to_vec();
        gather_rows(&c, rows.len(), mine, local).unwrap()
    });
    assert_eq!(lm_dist::share(5, 2, 0), 0..3);
    assert_eq!(out, [rows.clone(), rows]);
    let refused = lm_dist::ThreadRank::run(2, |c| {
        let local = vec![vec![if c.rank() == 1 { 1 << 24 } else { 3 }]];
        gather_rows(&c, 2, c.rank()..c.rank() + 1, local).is_err()
    });
    assert_eq!(refused, [true, true]);
}

#[test]
fn freezing_the_encoder_keeps_the_decoder_and_head_trainable() {
    for frozen in [
        "bert.encoder.layer.0.output.dense.weight",
        "bert.embeddings.word_embeddings.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "shared.weight",
        "model.encoder.layers.0.fc1.weight",
        "model.shared.weight",
    ] {
        assert!(is_frozen(frozen, Freeze::Encoder), "{frozen}");
    }
    for trained in [
        "classifier.weight",
        "decoder.block.0.layer.1.EncDecAttention.q.weight",
        "model.decoder.layers.0.fc1.weight",
        "transformer.h.0.mlp.c_fc.weight",
    ] {
        assert!(!is_frozen(trained, Freeze::Encoder), "{trained}");
    }
    assert!(
        is_frozen("transformer.wte.weight", Freeze::Embeddings)
            && !is_frozen("transformer.h.0.attn.c_attn.weight", Freeze::Embeddings)
    );
    assert!(!is_frozen(
        "bert.embeddings.word_embeddings.weight",
        Freeze::None
    ));
}
