// LayerNorm kernels of one ISA (no include guard: kernels.h includes this file once per ISA).
// The row kernels are shared by the fused LayerNorm (layer_norm.cpp) and the fused decode
// (decode_kernel.h); the row loops below are layer_norm.cpp's forward and backward.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

// The naive loop: layer_norm_forward (below) on N contiguous rows of C, the textbook two
// passes, mean then variance. For reading, and for the tests, which hold every ISA's forward
// to it (naive.cpp).
static inline void layer_norm_naive(const float* x, int64_t N, int64_t C, const float* w,
                                    const float* b, float eps, float* y) {
  for (int64_t r = 0; r < N; ++r) {
    const float* xr = x + r * C;
    float mean = 0.f, var = 0.f;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float rstd = 1.0f / std::sqrt(var / static_cast<float>(C) + eps);
    for (int64_t c = 0; c < C; ++c)
      y[r * C + c] = (xr[c] - mean) * rstd * (w ? w[c] : 1.f) + (b ? b[c] : 0.f);
  }
}

// Moments of one row, shifted by its first element for accuracy: d_j = x_j - x_0 is exact
// when the row's values are close to each other (Sterbenz), so a large common offset (|mean| >>
// spread) costs no precision: md = mean(d), var = mean((d - md)^2); mean = x_0 + md.
// The normalized value is then ((x_j - x_0) - md) * rstd.
static inline void row_moments(const float* x, int64_t C, float eps, float& shift, float& md,
                               float& rstd) {
  const float x0 = x[0];
  const V v0 = vset1(x0);
  int64_t j = 0;
  V a0 = vzero(), a1 = vzero();
  for (; j + 2 * W <= C; j += 2 * W) {
    a0 = vadd(a0, vsub(vload(x + j), v0));
    a1 = vadd(a1, vsub(vload(x + j + W), v0));
  }
  for (; j + W <= C; j += W) a0 = vadd(a0, vsub(vload(x + j), v0));
  float s = vhsum(vadd(a0, a1));
  for (; j < C; ++j) s += x[j] - x0;
  const float m = s / static_cast<float>(C);
  const V vm = vset1(m);
  j = 0;
  a0 = vzero();
  a1 = vzero();
  for (; j + 2 * W <= C; j += 2 * W) {
    const V d0 = vsub(vsub(vload(x + j), v0), vm);
    const V d1 = vsub(vsub(vload(x + j + W), v0), vm);
    a0 = vfmadd(d0, d0, a0);
    a1 = vfmadd(d1, d1, a1);
  }
  for (; j + W <= C; j += W) {
    const V d0 = vsub(vsub(vload(x + j), v0), vm);
    a0 = vfmadd(d0, d0, a0);
  }
  float v = vhsum(vadd(a0, a1));
  for (; j < C; ++j) {
    const float d = (x[j] - x0) - m;
    v += d * d;
  }
  shift = x0;
  md = m;
  rstd = 1.0f / std::sqrt(v / static_cast<float>(C) + eps);
}

// y = ((x - shift) - md) * rstd * w + b   (w, b may be null). y may equal x.
static inline void row_normalize(const float* x, float* y, const float* w, const float* b,
                                 int64_t C, float shift, float md, float rstd) {
  int64_t j = 0;
  const V vs = vset1(shift), vm = vset1(md), vr = vset1(rstd);
  for (; j + W <= C; j += W) {
    V t = vmul(vsub(vsub(vload(x + j), vs), vm), vr);
    if (w) t = vmul(t, vload(w + j));
    if (b) t = vadd(t, vload(b + j));
    vstore(y + j, t);
  }
  for (; j < C; ++j) {
    float t = ((x[j] - shift) - md) * rstd;
    if (w) t *= w[j];
    if (b) t += b[j];
    y[j] = t;
  }
}

// h (B, C) = F.layer_norm(x, (C,), w, b, eps), row by row (the decode kernels' rows).
static inline void layer_norm_rows(const float* x, int64_t B, int64_t C, const float* w,
                                   const float* b, float eps, float* h) {
  for (int64_t r = 0; r < B; ++r) {
    float shift, md, rstd;
    row_moments(x + r * C, C, eps, shift, md, rstd);
    row_normalize(x + r * C, h + r * C, w, b, C, shift, md, rstd);
  }
}

// Forward over N rows of x (addressed through `rows`, last dim contiguous) into contiguous
// out; mean_out / rstd_out: null or (N,).
static inline void layer_norm_forward(const float* x, const StridedRows& rows, int64_t N,
                                      int64_t C, const float* w, const float* b, float eps,
                                      float* out, float* mean_out, float* rstd_out) {
  const int64_t grain = std::max<int64_t>(1, 65536 / C);  // small inputs: one thread
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + rows.offset(r);
      float shift, md, rstd;
      row_moments(xr, C, eps, shift, md, rstd);
      row_normalize(xr, out + r * C, w, b, C, shift, md, rstd);
      if (mean_out) {
        mean_out[r] = shift + md;
        rstd_out[r] = rstd;
      }
    }
  });
}

// Backward of one row: xhat = ((x - sh) - m) * rs, gw = g * w;
// dx = rs * (gw - mean(gw) - xhat * mean(gw * xhat)); dw += g * xhat; db += g.
static inline void row_backward(const float* xr, const float* gr, const float* w, float* dxr,
                                float* dwp, float* dbp, int64_t C, float sh, float m, float rs) {
  const float inv_c = 1.0f / static_cast<float>(C);
  const V vsh = vset1(sh), vm = vset1(m), vr = vset1(rs);
  // pass 1: sums of gw and gw * xhat; accumulate dweight / dbias
  int64_t j = 0;
  V a1 = vzero(), a2 = vzero();
  for (; j + W <= C; j += W) {
    const V xh = vmul(vsub(vsub(vload(xr + j), vsh), vm), vr);
    const V gv = vload(gr + j);
    const V gw = w ? vmul(gv, vload(w + j)) : gv;
    a1 = vadd(a1, gw);
    a2 = vfmadd(gw, xh, a2);
    vstore(dwp + j, vfmadd(gv, xh, vload(dwp + j)));
    vstore(dbp + j, vadd(gv, vload(dbp + j)));
  }
  float s1 = vhsum(a1), s2 = vhsum(a2);
  for (; j < C; ++j) {
    const float xh = ((xr[j] - sh) - m) * rs;
    const float gw = w ? gr[j] * w[j] : gr[j];
    s1 += gw;
    s2 += gw * xh;
    dwp[j] += gr[j] * xh;
    dbp[j] += gr[j];
  }
  // pass 2: dx
  const float c1 = s1 * inv_c, c2 = s2 * inv_c;
  const V vc1 = vset1(c1), vc2 = vset1(c2);
  j = 0;
  for (; j + W <= C; j += W) {
    const V xh = vmul(vsub(vsub(vload(xr + j), vsh), vm), vr);
    const V gv = vload(gr + j);
    const V gw = w ? vmul(gv, vload(w + j)) : gv;
    vstore(dxr + j, vmul(vfnmadd(xh, vc2, vsub(gw, vc1)), vr));
  }
  for (; j < C; ++j) {
    const float xh = ((xr[j] - sh) - m) * rs;
    const float gw = w ? gr[j] * w[j] : gr[j];
    dxr[j] = rs * (gw - c1 - xh * c2);
  }
}

// Backward over N rows: dx (contiguous), per-thread partial dweight / dbias sums in
// `partial` (nthreads x 2 x C, zeroed), reduced by the caller. mean / rstd: null (recompute
// per row) or (N,).
static inline void layer_norm_backward(const float* x, const StridedRows& rows, const float* g,
                                       const float* w, const float* mean, const float* rstd,
                                       float eps, int64_t N, int64_t C, float* dx,
                                       float* partial, int nthreads) {
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    int tid = at::get_thread_num();
    if (tid < 0 || tid >= nthreads) tid = 0;  // defensive; not expected
    float* dwp = partial + static_cast<int64_t>(tid) * 2 * C;
    float* dbp = dwp + C;
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + rows.offset(r);
      float sh, m, rs;  // xhat = ((x - sh) - m) * rs
      if (mean) {
        sh = mean[r];
        m = 0.f;
        rs = rstd[r];
      } else {
        row_moments(xr, C, eps, sh, m, rs);
      }
      row_backward(xr, g + r * C, w, dx + r * C, dwp, dbp, C, sh, m, rs);
    }
  });
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
