// Softmax + sparse categorical cross-entropy over a whole batch in ONE workgroup, so the
// per-batch loss sum and correct count are reduced in a fixed order (deterministic, no
// float atomics). Per row: first-maximum argmax, log-sum-exp loss, and in training the
// gradient of the mean loss (softmax − onehot)/batch; in evaluation the predicted class.
//
// Training: the row's sample is order[s·stride + row] with s = state[0] (the step index
// inside the epoch); the batch's loss (f32 bits) and correct count go to stats[2s],
// stats[2s + 1], then thread 0 advances state[0] to s + 1 — this is the step counter.
// Evaluation: sample base + row, results to stats[2·slot..], predictions[pred_base + row].
//
// The uniform block `u: Sx` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

const WG: u32 = 256u;

var<workgroup> part_loss: array<f32, 256>;
var<workgroup> part_correct: array<u32, 256>;

@compute @workgroup_size(256, 1, 1)
fn softmax_xent(@builtin(local_invocation_index) lid: u32) {
    let s = state[0];
    let classes = u.classes;
    let inv_batch = 1.0 / f32(u.batch);
    var loss = 0.0;
    var correct = 0u;
    for (var row = lid; row < u.batch; row += WG) {
        var index = u.base + row;
        if (u.use_order != 0u) {
            index = order[s * u.stride + row];
        }
        let label = labels[index];
        let off = row * classes;
        var best = 0u;
        var mx = logits[off];
        for (var i = 1u; i < classes; i++) {
            let v = logits[off + i];
            if (v > mx) {
                mx = v;
                best = i;
            }
        }
        var sum = 0.0;
        for (var i = 0u; i < classes; i++) {
            sum = sum + exp(logits[off + i] - mx);
        }
        loss = loss + (mx + log(sum) - logits[off + label]);
        correct = correct + select(0u, 1u, best == label);
        if (u.training != 0u) {
            for (var i = 0u; i < classes; i++) {
                let p = exp(logits[off + i] - mx) / sum;
                grad[off + i] = (p - select(0.0, 1.0, i == label)) * inv_batch;
            }
        } else {
            predictions[u.pred_base + row] = best;
        }
    }
    part_loss[lid] = loss;
    part_correct[lid] = correct;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        if (lid < width) {
            part_loss[lid] = part_loss[lid] + part_loss[lid + width];
            part_correct[lid] = part_correct[lid] + part_correct[lid + width];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var slot = u.slot;
        if (u.training != 0u) {
            slot = s;
            state[0] = s + 1u;
        }
        stats[2u * slot] = bitcast<u32>(part_loss[0]);
        stats[2u * slot + 1u] = part_correct[0];
    }
}
