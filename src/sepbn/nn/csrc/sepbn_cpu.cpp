// C++ CPU kernels of SepBN, registered as torch ops in the namespace `sepbn_cpu`.
//
// Built once per machine by sepbn/nn/native.py with the system's C++ compiler; the Python
// side adds the autograd formulas and the fake (shape) functions. Every op takes
// float32/float64 maps, NCHW- or channels-last-contiguous (other strides are copied to
// NCHW), and returns maps in the input's layout; each op runs its passes in one OpenMP
// region (run_phased).
//
// One pass over each (n, c) plane computes its mean and centred sum of squares (Chan's
// combination then gives the batch statistics) and its T x T adaptive max pooling with
// arg-max, which ATen computes in a second, scalar pass. The plane is read three times
// while it sits in L1/L2 (sum, centred squares, pooling), from memory once.
//
// Arg-max ties are resolved as ATen's adaptive_max_pool2d resolves them (first
// occurrence in row-major order within the window), so indices, and hence gradients,
// are identical. A plane holding a NaN or an infinity takes ATen's own scan (a NaN wins).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <cmath>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <tuple>
#include <vector>

namespace sepbn_cpu {
namespace {

using at::Tensor;

constexpr int64_t kChunk = 2048;  // elements summed in scalar_t before the double total

// Elements per parallel task. With OMP_WAIT_POLICY=PASSIVE (which sepbn sets on shared
// machines) waking the second OpenMP thread costs 50-80 µs: worth it for a training
// batch, not for a small batch-1 inference, which runs on one thread up to 2^17 elements
// (a 128×32×32 map; the op's single region then wakes one thread for a 64×64×64 map).
// Under any other policy (libgomp's default spins a while before sleeping) the threads
// are awake and inference splits as training does.
constexpr int64_t kGrainElements = 1 << 16;

bool passive_wait_policy() {
  static const bool passive = [] {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    if (policy == nullptr) return false;
    std::string value(policy);
    for (char& ch : value) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    return value == "PASSIVE";
  }();
  return passive;
}

inline int64_t inference_grain_elements() {
  return passive_wait_policy() ? int64_t{1} << 17 : int64_t{1} << 14;
}

inline int64_t band_start(int64_t i, int64_t size, int64_t t) { return (i * size) / t; }
inline int64_t band_end(int64_t i, int64_t size, int64_t t) {
  return ((i + 1) * size + t - 1) / t;
}

// Planes per task, so that a task touches at least `elements` elements.
inline int64_t plane_grain(int64_t hw, int64_t elements = kGrainElements) {
  return std::max<int64_t>(1, elements / std::max<int64_t>(hw, 1));
}

// Channels per task for loops over channels, each channel holding n planes of hw values.
inline int64_t channel_grain(int64_t n, int64_t hw) { return plane_grain(n * hw); }

// ---- one parallel region per op -----------------------------------------------------
//
// Under OMP_WAIT_POLICY=PASSIVE a thread sleeps as soon as a parallel region ends, and
// waking it for the next one costs 50-80 µs on this project's 2-core machines: a train
// step that opened four regions (pooling, mapping; backward, scatter) paid more for the
// wake-ups than for the scatter's work. An op therefore runs its passes in one region
// (run_phased): each thread takes its share of the first pass, one thread then runs the
// serial middle (the attention) while the others spin at a barrier for those few
// microseconds, and each thread takes its share of the last pass. The shares split a
// range as at::parallel_for splits it, so a thread revisits the planes it last touched.

// This thread's place in a phased region; `team` is 0 outside one.
struct Share {
  int64_t tid = 0, team = 0;
};

// f(begin, end) over [0, range): its own region (at::parallel_for) outside a phased region,
// inside one this thread's contiguous share (ATen's split: chunks of ceil(range / team)).
template <typename F>
void for_share(const Share* share, int64_t range, int64_t grain, const F& f) {
  if (share == nullptr || share->team == 0) {
    at::parallel_for(0, range, grain, f);
    return;
  }
  const int64_t chunk = (range + share->team - 1) / share->team;
  const int64_t begin = share->tid * chunk;
  if (begin < range) f(begin, std::min(range, begin + chunk));
}

// Threads for a range split with `grain` items per task, as at::parallel_for counts them.
inline int64_t team_size(int64_t range, int64_t grain) {
  if (at::in_parallel_region() || range <= grain) return 1;
  const int64_t tasks = (range + grain - 1) / grain;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// A sense-reversing barrier that spins (then yields: the serial middle of a large batch
// may take longer than a spin is worth) instead of sleeping in the kernel.
class SpinBarrier {
 public:
  void set_parties(int64_t parties) { parties_.store(parties, std::memory_order_relaxed); }
  void wait() {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) ==
        parties_.load(std::memory_order_relaxed) - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // pause is ~40-140 cycles, so 2^11 of them cover the serial middle (10-30 µs at batch
    // 8) and then yield: with more threads than cores a spinner would take the core from
    // the thread it waits for.
    constexpr int kSpins = 1 << 11;
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < kSpins) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  std::atomic<int64_t> parties_{1}, arrived_{0}, generation_{0};
};

// first(share), then middle() on one thread, then last(share), all in one parallel region
// of up to `threads` threads (none below two). An exception in any phase is rethrown after
// the region (a thread that failed still meets the barriers, and the phases after a
// failure are skipped).
template <typename First, typename Middle, typename Last>
void run_phased(int64_t threads, const First& first, const Middle& middle, const Last& last) {
  if (threads <= 1) {
    const Share alone;
    first(&alone);
    middle();
    last(&alone);
    return;
  }
  SpinBarrier barrier;
  std::exception_ptr error;
  std::mutex error_lock;
  std::atomic<bool> failed{false};
  auto guarded = [&](const auto& phase) {
    if (failed.load(std::memory_order_acquire)) return;
    try {
      phase();
    } catch (...) {
      const std::lock_guard<std::mutex> hold(error_lock);
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_release);
    }
  };
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    const Share share{omp_get_thread_num(), omp_get_num_threads()};
    barrier.set_parties(share.team);  // every thread stores the same value before waiting
    guarded([&] { first(&share); });
    barrier.wait();
    if (share.tid == 0) guarded(middle);
    barrier.wait();
    guarded([&] { last(&share); });
  }
  if (error) std::rethrow_exception(error);
}

// x itself when NCHW- or channels-last-contiguous, else an NCHW copy (inside torch.compile
// the ops accept any layout inductor picks: they are tagged flexible_layout).
Tensor checked_map(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, " must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", x.scalar_type());
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  return x.contiguous();
}

// Inner loops as restrict-qualified helpers, which the compiler vectorizes (it does not
// when the same loops sit inside a lambda over tensors' data pointers).
template <typename scalar_t>
void column_max(const scalar_t* __restrict row, scalar_t* __restrict best, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const scalar_t v = row[j], m = best[j];
    best[j] = v > m ? v : m;
  }
}

template <typename scalar_t>
void multiply_add(const scalar_t* __restrict x, scalar_t* __restrict y, int64_t n, scalar_t a,
                  scalar_t b) {
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * a + b;
}

template <typename scalar_t>
void grad_combine(const scalar_t* __restrict g, const scalar_t* __restrict x,
                  scalar_t* __restrict out, int64_t n, scalar_t a, scalar_t q, scalar_t mu,
                  scalar_t d) {
  for (int64_t j = 0; j < n; ++j) out[j] = a * g[j] + q * (x[j] - mu) + d;
}

// Reductions keep kSumLanes partial sums (four AVX2 registers): with one vector
// accumulator, each addition waits for the previous one (4 cycles), so a plane in L1 is
// summed at a quarter of the speed the loads allow.
template <typename scalar_t>
constexpr int64_t kSumLanes = 128 / sizeof(scalar_t);

// Σ of the kSumLanes partial sums, pairwise (log2 steps of vector additions).
template <typename scalar_t>
scalar_t lanes_total(scalar_t* lanes) {
  for (int64_t half = kSumLanes<scalar_t> / 2; half > 0; half /= 2) {
    for (int64_t l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  }
  return lanes[0];
}

// Σ g and Σ g (x - μ) over n elements.
template <typename scalar_t>
void centred_dot(const scalar_t* __restrict g, const scalar_t* __restrict x, int64_t n,
                 scalar_t mu, scalar_t* sum_g, scalar_t* sum_gx) {
  constexpr int64_t kL = kSumLanes<scalar_t>;
  if (n < 4 * kL) {  // short: one vector accumulator, no partial sums to combine
    scalar_t t1 = 0, t2 = 0;
    _Pragma("omp simd reduction(+ : t1, t2)")
    for (int64_t j = 0; j < n; ++j) {
      t1 += g[j];
      t2 += g[j] * (x[j] - mu);
    }
    *sum_g = t1;
    *sum_gx = t2;
    return;
  }
  scalar_t a1[kL] = {}, a2[kL] = {};
  int64_t j = 0;
  for (; j + kL <= n; j += kL) {
    for (int64_t l = 0; l < kL; ++l) {
      a1[l] += g[j + l];
      a2[l] += g[j + l] * (x[j + l] - mu);
    }
  }
  scalar_t t1 = 0, t2 = 0;
  for (; j < n; ++j) {
    t1 += g[j];
    t2 += g[j] * (x[j] - mu);
  }
  *sum_g = lanes_total(a1) + t1;
  *sum_gx = lanes_total(a2) + t2;
}

template <typename scalar_t>
scalar_t dot(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t n) {
  scalar_t acc = 0;
  _Pragma("omp simd reduction(+ : acc)")
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// y += alpha x
template <typename scalar_t>
void axpy(const scalar_t* __restrict x, scalar_t* __restrict y, int64_t n, scalar_t alpha) {
  for (int64_t j = 0; j < n; ++j) y[j] += alpha * x[j];
}

// Σ p over n elements.
template <typename scalar_t>
scalar_t plane_sum(const scalar_t* __restrict p, int64_t n) {
  constexpr int64_t kL = kSumLanes<scalar_t>;
  if (n < 4 * kL) {
    scalar_t total = 0;
    _Pragma("omp simd reduction(+ : total)")
    for (int64_t j = 0; j < n; ++j) total += p[j];
    return total;
  }
  scalar_t acc[kL] = {};
  int64_t j = 0;
  for (; j + kL <= n; j += kL) {
    for (int64_t l = 0; l < kL; ++l) acc[l] += p[j + l];
  }
  scalar_t tail = 0;
  for (; j < n; ++j) tail += p[j];
  return lanes_total(acc) + tail;
}

// Σ (p - s)² and Σ (p - s) over n elements.
template <typename scalar_t>
void shifted_squares(const scalar_t* __restrict p, int64_t n, scalar_t shift, scalar_t* squares,
                     scalar_t* residual) {
  constexpr int64_t kL = kSumLanes<scalar_t>;
  if (n < 4 * kL) {
    scalar_t total_sq = 0, total_rs = 0;
    _Pragma("omp simd reduction(+ : total_sq, total_rs)")
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t d = p[j] - shift;
      total_sq += d * d;
      total_rs += d;
    }
    *squares = total_sq;
    *residual = total_rs;
    return;
  }
  scalar_t sq[kL] = {}, rs[kL] = {};
  int64_t j = 0;
  for (; j + kL <= n; j += kL) {
    for (int64_t l = 0; l < kL; ++l) {
      const scalar_t d = p[j + l] - shift;
      sq[l] += d * d;
      rs[l] += d;
    }
  }
  scalar_t tail_sq = 0, tail_rs = 0;
  for (; j < n; ++j) {
    const scalar_t d = p[j] - shift;
    tail_sq += d * d;
    tail_rs += d;
  }
  *squares = lanes_total(sq) + tail_sq;
  *residual = lanes_total(rs) + tail_rs;
}

// Mean and centred sum of squares of one contiguous plane.
template <typename scalar_t>
void plane_moments(const scalar_t* p, int64_t hw, double* mean, double* m2) {
  double total = 0.0;
  for (int64_t b = 0; b < hw; b += kChunk) total += plane_sum(p + b, std::min(hw, b + kChunk) - b);
  const double mu = total / static_cast<double>(hw);
  const scalar_t shift = static_cast<scalar_t>(mu);
  double squares = 0.0, residual = 0.0;
  for (int64_t b = 0; b < hw; b += kChunk) {
    scalar_t sq = 0, rs = 0;
    shifted_squares(p + b, std::min(hw, b + kChunk) - b, shift, &sq, &rs);
    squares += sq;
    residual += rs;
  }
  // Σ(x - s)² - (Σ(x - s))² / n is Σ(x - μ)² for the rounded shift s.
  *mean = mu;
  *m2 = std::max(0.0, squares - residual * residual / static_cast<double>(hw));
}

// ATen's adaptive max pooling of one plane, exactly: a row-major scan of every window
// that keeps the first maximum and lets a NaN win. Used for planes holding a NaN or an
// infinity (rare; the fast scans below assume ordered values).
template <typename scalar_t>
void plane_pool_exact(const scalar_t* p, int64_t h, int64_t w, int64_t t, scalar_t* out,
                      int64_t out_stride, int32_t* index) {
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t jj = 0; jj < t; ++jj) {
      int64_t best_at = band_start(i, h, t) * w + band_start(jj, w, t);
      scalar_t best = p[best_at];
      for (int64_t r = band_start(i, h, t); r < band_end(i, h, t); ++r) {
        for (int64_t q = band_start(jj, w, t); q < band_end(jj, w, t); ++q) {
          const scalar_t v = p[r * w + q];
          if ((v > best) || std::isnan(v)) {
            best = v;
            best_at = r * w + q;
          }
        }
      }
      out[(i * t + jj) * out_stride] = best;
      if (index != nullptr) index[i * t + jj] = static_cast<int32_t>(best_at);
    }
  }
}

// The adaptive pooling's bands (rows [row0[i], row1[i]), columns [col0[j], col1[j])),
// computed once per call rather than per plane (each bound is an integer division), and,
// when `with_offsets`, the T x T windows of a small plane as flat offsets, each window in
// row-major order (so a strict comparison keeps ATen's first maximum):
// `start[t]..start[t + 1]`.
struct WindowTable {
  std::vector<int64_t> row0, row1, col0, col1;
  std::vector<int32_t> offset, start;
  WindowTable(int64_t h, int64_t w, int64_t t, bool with_offsets) {
    for (int64_t i = 0; i < t; ++i) {
      row0.push_back(band_start(i, h, t));
      row1.push_back(band_end(i, h, t));
      col0.push_back(band_start(i, w, t));
      col1.push_back(band_end(i, w, t));
    }
    if (!with_offsets) return;
    start.push_back(0);
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t jj = 0; jj < t; ++jj) {
        for (int64_t r = row0[i]; r < row1[i]; ++r)
          for (int64_t q = col0[jj]; q < col1[jj]; ++q)
            offset.push_back(static_cast<int32_t>(r * w + q));
        start.push_back(static_cast<int32_t>(offset.size()));
      }
    }
  }
};

// Column-wise maximum over rows [h0, h1) of a plane of width w, into best[0, w): blocks of
// kLanes columns accumulate in registers while the rows stream past (one load per element).
template <typename scalar_t>
void band_column_max(const scalar_t* __restrict p, int64_t w, int64_t h0, int64_t h1,
                     scalar_t* __restrict best) {
  constexpr int64_t kLanes = 64 / sizeof(scalar_t);  // two AVX2 registers
  int64_t j = 0;
  for (; j + kLanes <= w; j += kLanes) {
    scalar_t acc[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = p[h0 * w + j + l];
    for (int64_t r = h0 + 1; r < h1; ++r) {
      const scalar_t* row = p + r * w + j;
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = row[l] > acc[l] ? row[l] : acc[l];
    }
    for (int64_t l = 0; l < kLanes; ++l) best[j + l] = acc[l];
  }
  if (j < w) {
    std::copy(p + h0 * w + j, p + h0 * w + w, best + j);
    for (int64_t r = h0 + 1; r < h1; ++r) column_max(p + r * w + j, best + j, w - j);
  }
}

// 32-byte GCC vector types (one AVX2 register; SSE pairs without AVX2) of values and of
// same-width integers, the type of a comparison's mask.
template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 8;
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 4;
};

// band_column_max that also keeps, per column, the band's first row holding the maximum
// (a strict comparison, so a later equal value does not move it): row_at[0, w). Written
// with vector types: GCC does not vectorize the value-and-index select as a plain loop.
template <typename scalar_t>
void band_column_argmax(const scalar_t* __restrict p, int64_t w, int64_t h0, int64_t h1,
                        scalar_t* __restrict best, int32_t* __restrict row_at) {
  using V = typename Vec<scalar_t>::V;
  using I = typename Vec<scalar_t>::I;
  using index_t = std::remove_reference_t<decltype(std::declval<I>()[0])>;
  constexpr int64_t kL = Vec<scalar_t>::kLanes;
  auto load = [](const scalar_t* at) {
    V v;
    std::memcpy(&v, at, sizeof(V));
    return v;
  };
  auto store = [&](int64_t j, V acc, I at) {
    std::memcpy(best + j, &acc, sizeof(V));
    for (int64_t l = 0; l < kL; ++l) row_at[j + l] = static_cast<int32_t>(at[l]);
  };
  int64_t j = 0;
  for (; j + 2 * kL <= w; j += 2 * kL) {  // two registers: two independent chains
    V acc0 = load(p + h0 * w + j), acc1 = load(p + h0 * w + j + kL);
    I at0 = I{} + static_cast<index_t>(h0), at1 = at0;
    for (int64_t r = h0 + 1; r < h1; ++r) {
      const V v0 = load(p + r * w + j), v1 = load(p + r * w + j + kL);
      const I row = I{} + static_cast<index_t>(r);
      const I take0 = v0 > acc0, take1 = v1 > acc1;
      acc0 = take0 ? v0 : acc0;
      acc1 = take1 ? v1 : acc1;
      at0 = take0 ? row : at0;
      at1 = take1 ? row : at1;
    }
    store(j, acc0, at0);
    store(j + kL, acc1, at1);
  }
  for (; j + kL <= w; j += kL) {
    V acc = load(p + h0 * w + j);
    I at = I{} + static_cast<index_t>(h0);
    for (int64_t r = h0 + 1; r < h1; ++r) {
      const V v = load(p + r * w + j);
      const I take = v > acc;
      acc = take ? v : acc;
      at = take ? I{} + static_cast<index_t>(r) : at;
    }
    store(j, acc, at);
  }
  for (; j < w; ++j) {
    scalar_t acc = p[h0 * w + j];
    int32_t at = static_cast<int32_t>(h0);
    for (int64_t r = h0 + 1; r < h1; ++r) {
      const scalar_t v = p[r * w + j];
      const bool take = v > acc;
      acc = take ? v : acc;
      at = take ? static_cast<int32_t>(r) : at;
    }
    best[j] = acc;
    row_at[j] = at;
  }
}

// A value and its flat position as one integer whose order is (value, then the smaller
// position), so that a window's arg-max is one branch-free maximum over integers: the
// value's bits mapped to a signed integer of the same order (a negative value's magnitude
// bits flipped; -0 is first made +0, so that it ties with +0 as the float comparison
// does and the position decides), above the complemented position. For finite values.
template <typename scalar_t>
struct ArgmaxKey;
template <>
struct ArgmaxKey<float> {
  using bits_t = int32_t;
  using key_t = int64_t;
};
template <>
struct ArgmaxKey<double> {
  using bits_t = int64_t;
  using key_t = __int128;
};

template <typename scalar_t>
inline typename ArgmaxKey<scalar_t>::key_t argmax_key(scalar_t value, int32_t position) {
  using bits_t = typename ArgmaxKey<scalar_t>::bits_t;
  using key_t = typename ArgmaxKey<scalar_t>::key_t;
  const scalar_t v = value + scalar_t(0);  // -0 + 0 = +0
  bits_t b;
  std::memcpy(&b, &v, sizeof(b));
  const bits_t ordered = b ^ ((b >> (8 * sizeof(bits_t) - 1)) & std::numeric_limits<bits_t>::max());
  return (static_cast<key_t>(ordered) << 32) |
         static_cast<key_t>(~static_cast<uint32_t>(position));
}

template <typename key_t>
inline int32_t argmax_key_position(key_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

// Row scratch of plane_pool_rows, one per thread: a row band's column maxima, their
// first rows, and their arg-max keys.
template <typename scalar_t>
struct RowScratch {
  std::vector<scalar_t> max;
  std::vector<int32_t> at;
  std::vector<typename ArgmaxKey<scalar_t>::key_t> key;
  explicit RowScratch(int64_t w) : max(w), at(w), key(w) {}
};

// The same for a plane of finite values, vectorized along rows: per row band, the
// column-wise maximum over the band's rows (and, for the arg-max, the first row holding
// it), then per column band the maximum of those. The arg-max is the smallest flat
// position among the columns holding the window's maximum, which is ATen's row-major
// first maximum: the largest argmax_key of the band's columns. The value written is the
// one at that position (so that the sign of a zero maximum matches too). Comparisons are
// branch-free: on random data a branch mispredicts every other time.
template <typename scalar_t>
void plane_pool_rows(const scalar_t* p, int64_t w, int64_t t, const WindowTable& bands,
                     RowScratch<scalar_t>& rows, scalar_t* out, int64_t out_stride,
                     int32_t* index) {
  using key_t = typename ArgmaxKey<scalar_t>::key_t;
  const int32_t w32 = static_cast<int32_t>(w);
  scalar_t* __restrict row_max = rows.max.data();
  int32_t* __restrict row_at = rows.at.data();
  key_t* __restrict key = rows.key.data();
  for (int64_t i = 0; i < t; ++i) {
    const int64_t h0 = bands.row0[i], h1 = bands.row1[i];
    if (index == nullptr) {
      band_column_max(p, w, h0, h1, row_max);
      for (int64_t jj = 0; jj < t; ++jj) {
        const int64_t w0 = bands.col0[jj], w1 = bands.col1[jj];
        scalar_t best = row_max[w0];
        for (int64_t j = w0 + 1; j < w1; ++j) best = row_max[j] > best ? row_max[j] : best;
        out[(i * t + jj) * out_stride] = best;
      }
      continue;
    }
    band_column_argmax(p, w, h0, h1, row_max, row_at);
    for (int64_t j = 0; j < w; ++j) {
      key[j] = argmax_key(row_max[j], row_at[j] * w32 + static_cast<int32_t>(j));
    }
    for (int64_t jj = 0; jj < t; ++jj) {
      const int64_t w0 = bands.col0[jj], w1 = bands.col1[jj];
      key_t best = key[w0];
      for (int64_t j = w0 + 1; j < w1; ++j) best = key[j] > best ? key[j] : best;
      const int32_t best_at = argmax_key_position(best);
      index[i * t + jj] = best_at;
      out[(i * t + jj) * out_stride] = p[best_at];
    }
  }
}

// A plane of finite values too narrow for row vectors: a branch-free scan per window.
template <typename scalar_t>
void plane_pool_table(const scalar_t* p, const WindowTable& table, int64_t tt, scalar_t* out,
                      int64_t out_stride, int32_t* index) {
  const int32_t* off = table.offset.data();
  const int32_t* start = table.start.data();
  for (int64_t win = 0; win < tt; ++win) {
    const int32_t b = start[win], e = start[win + 1];
    int32_t best_at = off[b];
    scalar_t best = p[best_at];
    for (int32_t j = b + 1; j < e; ++j) {
      const scalar_t v = p[off[j]];
      const bool take = v > best;
      best = take ? v : best;
      best_at = take ? off[j] : best_at;
    }
    out[win * out_stride] = best;
    if (index != nullptr) index[win] = best_at;
  }
}

// Below this width a row does not fill a vector register; windows are scanned instead.
constexpr int64_t kMinRowWidth = 8;

// Planes of at most this many elements are pooled kLanes channels at a time (below): at
// 8×8 that costs 0.18 ms instead of 0.27 per 512-channel batch of 8 (pooling and attention,
// 2 threads); at 16×16 the row scans win (0.22 ms against 0.35).
constexpr int64_t kMaxBlockedPlane = 64;

// One plane's pooling, and optionally its moments, by the scans above. `dst` is the
// plane's first pooled value in the position-major rows (stride c), `where` its T·T
// arg-max slots or nullptr, `mean`/`m2` its moment slots or nullptr.
template <typename scalar_t>
void pool_plane(const scalar_t* src, int64_t h, int64_t w, int64_t t, const WindowTable& table,
                RowScratch<scalar_t>& rows, scalar_t* dst, int64_t c, int32_t* where,
                double* mean,
                double* m2) {
  const int64_t hw = h * w;
  bool finite;
  if (mean != nullptr) {
    plane_moments(src, hw, mean, m2);
    finite = std::isfinite(*mean);
  } else {
    finite = std::isfinite(static_cast<double>(plane_sum(src, hw)));
  }
  if (!finite) {
    plane_pool_exact(src, h, w, t, dst, c, where);
  } else if (w < kMinRowWidth) {
    plane_pool_table(src, table, t * t, dst, c, where);
  } else {
    plane_pool_rows(src, w, t, table, rows, dst, c, where);
  }
}

// kLanes consecutive channels of one sample whose planes are small (at most
// kMaxBlockedPlane elements): transposed into `buf` (element-major, kLanes values per
// element), then the sums, the centred squares and every window's maximum run across
// the channels, one vector operation per element instead of a loop per plane. The
// window scans are those of plane_pool_table (row-major order, strict comparison: ATen's
// first maximum). Planes holding a NaN or an infinity fall back to pool_plane.
template <typename scalar_t>
void pool_channel_block(const scalar_t* src, int64_t h, int64_t w, int64_t t,
                        const WindowTable& table, scalar_t* buf, RowScratch<scalar_t>& rows,
                        scalar_t* dst, int64_t c, int32_t* where, double* mean,
                        double* m2) {
  constexpr int64_t kLanes = 32 / sizeof(scalar_t);  // one AVX2 register
  using V = typename Vec<scalar_t>::V;
  using I = typename Vec<scalar_t>::I;
  using index_t = std::remove_reference_t<decltype(std::declval<I>()[0])>;
  static_assert(Vec<scalar_t>::kLanes == kLanes);
  const int64_t hw = h * w, tt = t * t;
  // Each element's kLanes values gathered into a register and stored whole: scalar stores
  // read back as one vector stall the load (no store forwarding), 16% of the pooling.
  for (int64_t e = 0; e < hw; ++e) {
    V v;
    for (int64_t l = 0; l < kLanes; ++l) v[l] = src[l * hw + e];
    std::memcpy(buf + e * kLanes, &v, sizeof(V));
  }
  scalar_t sum[kLanes] = {};
  for (int64_t e = 0; e < hw; ++e) {
    for (int64_t l = 0; l < kLanes; ++l) sum[l] += buf[e * kLanes + l];
  }
  bool finite = true;
  for (int64_t l = 0; l < kLanes; ++l) finite &= std::isfinite(static_cast<double>(sum[l]));
  if (!finite) {
    for (int64_t l = 0; l < kLanes; ++l) {
      pool_plane(src + l * hw, h, w, t, table, rows, dst + l, c,
                 where != nullptr ? where + l * tt : nullptr,
                 mean != nullptr ? mean + l : nullptr, m2 != nullptr ? m2 + l : nullptr);
    }
    return;
  }
  if (mean != nullptr) {  // as plane_moments: squares about the rounded mean, corrected
    scalar_t shift[kLanes], squares[kLanes] = {}, residual[kLanes] = {};
    for (int64_t l = 0; l < kLanes; ++l) {
      mean[l] = static_cast<double>(sum[l]) / static_cast<double>(hw);
      shift[l] = static_cast<scalar_t>(mean[l]);
    }
    for (int64_t e = 0; e < hw; ++e) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const scalar_t d = buf[e * kLanes + l] - shift[l];
        squares[l] += d * d;
        residual[l] += d;
      }
    }
    for (int64_t l = 0; l < kLanes; ++l) {
      const double r = static_cast<double>(residual[l]);
      m2[l] = std::max(0.0, static_cast<double>(squares[l]) - r * r / static_cast<double>(hw));
    }
  }
  const int32_t* off = table.offset.data();
  const int32_t* start = table.start.data();
  // One vector per window element (kLanes channels), as vector types: GCC leaves the
  // value-and-index select of a plain loop scalar.
  auto load = [&](int32_t element) {
    V v;
    std::memcpy(&v, buf + element * kLanes, sizeof(V));
    return v;
  };
  for (int64_t win = 0; win < tt; ++win) {
    const int32_t b = start[win], e = start[win + 1];
    V best = load(off[b]);
    if (where == nullptr) {
      for (int32_t j = b + 1; j < e; ++j) {
        const V v = load(off[j]);
        best = v > best ? v : best;
      }
      std::memcpy(dst + win * c, &best, sizeof(V));
      continue;
    }
    I at = I{} + static_cast<index_t>(off[b]);
    for (int32_t j = b + 1; j < e; ++j) {
      const V v = load(off[j]);
      const I take = v > best;
      best = take ? v : best;
      at = take ? I{} + static_cast<index_t>(off[j]) : at;
    }
    std::memcpy(dst + win * c, &best, sizeof(V));
    for (int64_t l = 0; l < kLanes; ++l) where[l * tt + win] = static_cast<int32_t>(at[l]);
  }
}

// ---- channels-last (NHWC) maps -------------------------------------------------------
//
// The same passes over (N, H, W, C)-ordered memory: a sample's map is H·W rows of C
// channels, so every loop runs along the channels (vectorized) and the per-(n, c) values
// are rows of C. Threads split the samples, so a per-(n, c) sum stays on one thread, and
// the backward's per-channel sums over the batch move into the op's serial middle.

// NHWC-strided and not also NCHW-contiguous (C = 1 or H = W = 1 are both; they take the
// NCHW code).
inline bool channels_last(const Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// An uninitialized map of x's shape in x's layout: channels-last for channels-last x, NCHW
// otherwise (the fake functions in native.py state the same rule).
inline Tensor map_like(const Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(channels_last(x)
                                                            ? at::MemoryFormat::ChannelsLast
                                                            : at::MemoryFormat::Contiguous));
}

// Samples per task.
inline int64_t sample_grain(const Tensor& x, int64_t elements = kGrainElements) {
  const int64_t per_sample = std::max<int64_t>(1, x.size(1) * x.size(2) * x.size(3));
  return std::max<int64_t>(1, elements / per_sample);
}

template <typename scalar_t>
void row_add(const scalar_t* __restrict v, scalar_t* __restrict acc, int64_t c) {
  for (int64_t j = 0; j < c; ++j) acc[j] += v[j];
}

template <typename scalar_t>
void row_shifted_squares(const scalar_t* __restrict v, const scalar_t* __restrict shift,
                         scalar_t* __restrict sq, scalar_t* __restrict rs, int64_t c) {
  for (int64_t j = 0; j < c; ++j) {
    const scalar_t d = v[j] - shift[j];
    sq[j] += d * d;
    rs[j] += d;
  }
}

template <typename scalar_t>
void row_centred_dot(const scalar_t* __restrict g, const scalar_t* __restrict v,
                     const scalar_t* __restrict mu, scalar_t* __restrict t1,
                     scalar_t* __restrict t2, int64_t c) {
  for (int64_t j = 0; j < c; ++j) {
    t1[j] += g[j];
    t2[j] += g[j] * (v[j] - mu[j]);
  }
}

template <typename scalar_t>
void row_multiply_add(const scalar_t* __restrict v, scalar_t* __restrict y,
                      const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t c) {
  for (int64_t j = 0; j < c; ++j) y[j] = v[j] * a[j] + b[j];
}

template <typename scalar_t>
void row_grad_combine(const scalar_t* __restrict g, const scalar_t* __restrict v,
                      scalar_t* __restrict out, const scalar_t* __restrict a,
                      const scalar_t* __restrict q, const scalar_t* __restrict mu,
                      const scalar_t* __restrict d, int64_t c) {
  for (int64_t j = 0; j < c; ++j) out[j] = a[j] * g[j] + q[j] * (v[j] - mu[j]) + d[j];
}

// Rows summed in scalar_t before the float64 total. Each channel's sum is one serial chain
// here (NCHW sums keep 32 partial sums per plane), so the chunks are short: float32
// gradients then round like the NCHW kernels' (the attention's backward amplifies it).
constexpr int64_t kRowChunk = 64;

// Σ over the hw rows of f(row, acc_a, acc_b), accumulated in scalar_t per kRowChunk rows
// and in float64 across chunks.
template <typename scalar_t, typename F>
void chunked_row_sums(int64_t hw, int64_t c, std::vector<double>& total_a,
                      std::vector<double>& total_b, const F& f) {
  std::vector<scalar_t> a(c), b(c);
  total_a.assign(c, 0.0);
  total_b.assign(c, 0.0);
  for (int64_t p0 = 0; p0 < hw; p0 += kRowChunk) {
    std::fill(a.begin(), a.end(), scalar_t(0));
    std::fill(b.begin(), b.end(), scalar_t(0));
    for (int64_t p = p0; p < std::min(hw, p0 + kRowChunk); ++p) f(p, a.data(), b.data());
    for (int64_t j = 0; j < c; ++j) {
      total_a[j] += a[j];
      total_b[j] += b[j];
    }
  }
}

// One sample's per-channel mean and centred sum of squares (plane_moments along rows).
template <typename scalar_t>
void nhwc_moments(const scalar_t* xs, int64_t hw, int64_t c, double* mean, double* m2) {
  std::vector<double> total, unused;
  chunked_row_sums<scalar_t>(hw, c, total, unused, [&](int64_t p, scalar_t* a, scalar_t*) {
    row_add(xs + p * c, a, c);
  });
  std::vector<scalar_t> shift(c);
  for (int64_t j = 0; j < c; ++j) {
    mean[j] = total[j] / static_cast<double>(hw);
    shift[j] = static_cast<scalar_t>(mean[j]);
  }
  std::vector<double> squares, residual;
  chunked_row_sums<scalar_t>(hw, c, squares, residual, [&](int64_t p, scalar_t* a, scalar_t* b) {
    row_shifted_squares(xs + p * c, shift.data(), a, b, c);
  });
  for (int64_t j = 0; j < c; ++j) {
    const double r = residual[j];
    m2[j] = std::max(0.0, squares[j] - r * r / static_cast<double>(hw));
  }
}

// One sample's T×T adaptive max pooling into `rows` (T·T rows of C) and, optionally, its
// arg-max into `index` ((C, T·T), the NCHW op's layout): every window scanned in row-major
// order with ATen's rule ((v > best) or v is NaN), so its first maximum and a NaN win.
template <typename scalar_t>
void nhwc_pool(const scalar_t* xs, int64_t w, int64_t c, int64_t t, const WindowTable& bands,
               scalar_t* rows, int32_t* index) {
  using V = typename Vec<scalar_t>::V;
  using I = typename Vec<scalar_t>::I;
  using index_t = std::remove_reference_t<decltype(std::declval<I>()[0])>;
  constexpr int64_t kL = Vec<scalar_t>::kLanes;
  const int64_t tt = t * t;
  std::vector<scalar_t> best(c);
  std::vector<index_t> at(c);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t jj = 0; jj < t; ++jj) {
      const int64_t win = i * t + jj, first = bands.row0[i] * w + bands.col0[jj];
      std::copy(xs + first * c, xs + (first + 1) * c, best.begin());
      std::fill(at.begin(), at.end(), static_cast<index_t>(first));
      for (int64_t r = bands.row0[i]; r < bands.row1[i]; ++r) {
        for (int64_t q = bands.col0[jj]; q < bands.col1[jj]; ++q) {
          const int64_t pos = r * w + q;
          if (pos == first) continue;
          const scalar_t* v = xs + pos * c;
          const I here = I{} + static_cast<index_t>(pos);
          int64_t j = 0;
          for (; j + kL <= c; j += kL) {
            V vv, bb;
            I aa;
            std::memcpy(&vv, v + j, sizeof(V));
            std::memcpy(&bb, best.data() + j, sizeof(V));
            std::memcpy(&aa, at.data() + j, sizeof(I));
            const I take = (vv > bb) | (vv != vv);
            bb = take ? vv : bb;
            aa = take ? here : aa;
            std::memcpy(best.data() + j, &bb, sizeof(V));
            std::memcpy(at.data() + j, &aa, sizeof(I));
          }
          for (; j < c; ++j) {
            const bool take = v[j] > best[j] || std::isnan(v[j]);
            best[j] = take ? v[j] : best[j];
            at[j] = take ? static_cast<index_t>(pos) : at[j];
          }
        }
      }
      std::copy(best.begin(), best.end(), rows + win * c);
      if (index != nullptr) {
        for (int64_t j = 0; j < c; ++j) index[j * tt + win] = static_cast<int32_t>(at[j]);
      }
    }
  }
}

// Backward sums of one sample: s1 = Σ g, s2 = r Σ g (x - μ), per channel.
template <typename scalar_t>
void nhwc_backward_sums(const scalar_t* gs, const scalar_t* xs, int64_t hw, int64_t c,
                        const scalar_t* mu, const scalar_t* r, scalar_t* s1, scalar_t* s2) {
  std::vector<double> t1, t2;
  chunked_row_sums<scalar_t>(hw, c, t1, t2, [&](int64_t p, scalar_t* a, scalar_t* b) {
    row_centred_dot(gs + p * c, xs + p * c, mu, a, b, c);
  });
  for (int64_t j = 0; j < c; ++j) {
    s1[j] = static_cast<scalar_t>(t1[j]);
    s2[j] = static_cast<scalar_t>(t2[j] * static_cast<double>(r[j]));
  }
}

// The input-gradient coefficients of norm_backward for every channel, from all samples'
// sums: d = -r c1, q = -r² c2 (each c a Σ over the batch, hence the op's serial middle).
std::vector<Tensor> nhwc_channel_coefficients(const Tensor& s1, const Tensor& s2,
                                              const Tensor& scale, const Tensor& rstd,
                                              int64_t hw) {
  const int64_t n = s1.size(0), c = s1.size(1);
  const double count = static_cast<double>(n * hw);
  Tensor d = at::empty({c}, s1.options()), q = at::empty({c}, s1.options());
  AT_DISPATCH_FLOATING_TYPES(s1.scalar_type(), "sepbn_nhwc_coefficients", [&] {
    const scalar_t* s1p = s1.const_data_ptr<scalar_t>();
    const scalar_t* s2p = s2.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* dp = d.mutable_data_ptr<scalar_t>();
    scalar_t* qp = q.mutable_data_ptr<scalar_t>();
    std::vector<double> sum1(c, 0.0), sum2(c, 0.0);
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t j = 0; j < c; ++j) {
        sum1[j] += static_cast<double>(sp[s * c + j]) * s1p[s * c + j];
        sum2[j] += static_cast<double>(sp[s * c + j]) * s2p[s * c + j];
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      const double rd = static_cast<double>(rp[j]);
      dp[j] = static_cast<scalar_t>(-rd * sum1[j] / count);
      qp[j] = static_cast<scalar_t>(-rd * rd * sum2[j] / count);
    }
  });
  return {d, q};
}

// Pooling (into position-major (N·T·T, C) rows, the layout the 1x1 convolution reads) and,
// optionally, arg-max indices (N, C, T·T) and per-plane moments (N, C) in float64. A plane
// whose sum is not finite (it holds a NaN or an infinity) is pooled by the exact scan.
// Small planes go kLanes channels at a time (pool_channel_block), larger ones one by one.
// The outputs are allocated by allocate_pooling; `share` as in for_share.
void allocate_pooling(const Tensor& x, int64_t t, Tensor& positions, Tensor* index,
                      Tensor* plane_mean, Tensor* plane_m2) {
  const int64_t n = x.size(0), c = x.size(1), tt = t * t;
  positions = at::empty({n * tt, c}, x.options());
  if (index != nullptr) *index = at::empty({n, c, tt}, x.options().dtype(at::kInt));
  if (plane_mean != nullptr) {
    *plane_mean = at::empty({n, c}, x.options().dtype(at::kDouble));
    *plane_m2 = at::empty({n, c}, x.options().dtype(at::kDouble));
  }
}

// Work units of the pooling (blocks of channels of small planes, or single planes), and
// units per task.
std::pair<int64_t, int64_t> pooling_units(const Tensor& x, bool training) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  if (channels_last(x)) {
    return {n, sample_grain(x, training ? kGrainElements : inference_grain_elements())};
  }
  const int64_t lanes = hw <= kMaxBlockedPlane ? 32 / static_cast<int64_t>(x.element_size()) : 1;
  const int64_t grain =
      plane_grain(hw * lanes, training ? kGrainElements : inference_grain_elements());
  return {n * ((c + lanes - 1) / lanes), grain};
}

void pool_and_moments(const Tensor& x, int64_t t, Tensor& positions, Tensor* index,
                      Tensor* plane_mean, Tensor* plane_m2, const Share* share = nullptr) {
  const int64_t c = x.size(1), h = x.size(2), w = x.size(3), hw = h * w;
  const int64_t tt = t * t;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sepbn_pool_and_moments", [&] {
    constexpr int64_t kLanes = 32 / sizeof(scalar_t);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* pos = positions.mutable_data_ptr<scalar_t>();
    int32_t* idx = index != nullptr ? index->mutable_data_ptr<int32_t>() : nullptr;
    double* pm = plane_mean != nullptr ? plane_mean->mutable_data_ptr<double>() : nullptr;
    double* pq = plane_m2 != nullptr ? plane_m2->mutable_data_ptr<double>() : nullptr;
    if (channels_last(x)) {
      const WindowTable bands(h, w, t, false);
      const auto [samples, grain] = pooling_units(x, pm != nullptr);
      for_share(share, samples, grain, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          const scalar_t* xs = xp + s * hw * c;
          if (pm != nullptr) nhwc_moments(xs, hw, c, pm + s * c, pq + s * c);
          nhwc_pool(xs, w, c, t, bands, pos + s * tt * c,
                    idx != nullptr ? idx + s * c * tt : nullptr);
        }
      });
      return;
    }
    const bool blocked = hw <= kMaxBlockedPlane;
    const WindowTable table(h, w, t, blocked || w < kMinRowWidth);
    // Work units: blocks of kLanes channels of one sample (the last block of a sample may
    // be shorter and goes plane by plane), or single planes.
    const int64_t lanes = blocked ? kLanes : 1;
    const int64_t blocks = (c + lanes - 1) / lanes;
    const auto [units, grain] = pooling_units(x, pm != nullptr);
    for_share(share, units, grain, [&](int64_t begin, int64_t end) {
      RowScratch<scalar_t> rows(w);
      std::vector<scalar_t> buf(blocked ? hw * kLanes : 0);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t s = unit / blocks, c0 = (unit % blocks) * lanes;
        const int64_t count = std::min(lanes, c - c0), plane = s * c + c0;
        scalar_t* dst = pos + s * tt * c + c0;
        int32_t* where = idx != nullptr ? idx + plane * tt : nullptr;
        double* mean = pm != nullptr ? pm + plane : nullptr;
        double* m2 = pq != nullptr ? pq + plane : nullptr;
        if (count == kLanes && blocked) {
          pool_channel_block(xp + plane * hw, h, w, t, table, buf.data(), rows, dst, c,
                             where, mean, m2);
          continue;
        }
        for (int64_t l = 0; l < count; ++l) {
          pool_plane(xp + (plane + l) * hw, h, w, t, table, rows,
                     dst + l, c,
                     where != nullptr ? where + l * tt : nullptr,
                     mean != nullptr ? mean + l : nullptr, m2 != nullptr ? m2 + l : nullptr);
        }
      }
    });
  });
}

// Batch mean and biased variance per channel from per-plane moments (Chan et al.), and
// the unbiased variance for the running average. Returns (mean, var, var_unbiased).
std::vector<Tensor> combine_moments(const Tensor& plane_mean, const Tensor& plane_m2,
                                    int64_t hw, at::ScalarType dtype) {
  const int64_t n = plane_mean.size(0), c = plane_mean.size(1);
  const double count = static_cast<double>(n * hw);
  auto opts = plane_mean.options().dtype(dtype);
  Tensor mean = at::empty({c}, opts), var = at::empty({c}, opts), unbiased = at::empty({c}, opts);
  const double* pm = plane_mean.const_data_ptr<double>();
  const double* pq = plane_m2.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "sepbn_combine_moments", [&] {
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* vp = var.mutable_data_ptr<scalar_t>();
    scalar_t* up = unbiased.mutable_data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < c; ++ch) {
      double mu = 0.0;
      for (int64_t s = 0; s < n; ++s) mu += pm[s * c + ch];
      mu /= static_cast<double>(n);
      double m2 = 0.0;
      for (int64_t s = 0; s < n; ++s) {
        const double d = pm[s * c + ch] - mu;
        m2 += pq[s * c + ch] + static_cast<double>(hw) * d * d;
      }
      mp[ch] = static_cast<scalar_t>(mu);
      vp[ch] = static_cast<scalar_t>(m2 / count);
      up[ch] = static_cast<scalar_t>(count > 1.0 ? m2 / (count - 1.0) : NAN);
    }
  });
  return {mean, var, unbiased};
}

// y[n, c] = x[n, c] * a[n, c] + b[n, c] over every plane, into a preallocated y.
void scale_shift_into(const Tensor& x, const Tensor& a, const Tensor& b, Tensor& y,
                      int64_t grain_elements = kGrainElements, const Share* share = nullptr) {
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sepbn_scale_shift", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (channels_last(x)) {
      const int64_t c = x.size(1);
      for_share(share, x.size(0), sample_grain(x, grain_elements), [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          for (int64_t p = 0; p < hw; ++p) {
            const int64_t row = (s * hw + p) * c;
            row_multiply_add(xp + row, yp + row, ap + s * c, bp + s * c, c);
          }
        }
      });
      return;
    }
    for_share(share, planes, plane_grain(hw, grain_elements), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        multiply_add(xp + plane * hw, yp + plane * hw, hw, ap[plane], bp[plane]);
      }
    });
  });
}


// 1 / sqrt(var + eps) per channel, in the statistics' dtype (as at::rsqrt(var + eps)).
Tensor inverse_std(const Tensor& var_in, double eps, at::ScalarType dtype) {
  Tensor var = var_in.to(dtype).contiguous();
  Tensor rstd = at::empty_like(var);
  AT_DISPATCH_FLOATING_TYPES(dtype, "sepbn_inverse_std", [&] {
    const scalar_t* vp = var.const_data_ptr<scalar_t>();
    scalar_t* rp = rstd.mutable_data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    for (int64_t ch = 0; ch < var.numel(); ++ch) rp[ch] = scalar_t(1) / std::sqrt(vp[ch] + e);
  });
  return rstd;
}

// The per-(n, c) multiply-add of y = scale (x - μ) r + shift: a = scale r, b = shift - μ a.
// A plain loop over N·C values: the five ATen calls it replaces cost more than the work.
std::vector<Tensor> fold(const Tensor& scale_in, const Tensor& shift_in, const Tensor& mean_in,
                         const Tensor& rstd_in) {
  Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  Tensor mean = mean_in.to(scale.scalar_type()).contiguous();
  Tensor rstd = rstd_in.to(scale.scalar_type()).contiguous();
  Tensor a = at::empty_like(scale), b = at::empty_like(scale);
  const int64_t n = scale.size(0), c = scale.size(1);
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "sepbn_fold", [&] {
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* hp = shift.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* ap = a.mutable_data_ptr<scalar_t>();
    scalar_t* bp = b.mutable_data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t ch = 0; ch < c; ++ch) {
        const scalar_t v = sp[s * c + ch] * rp[ch];
        ap[s * c + ch] = v;
        bp[s * c + ch] = hp[s * c + ch] - v * mp[ch];
      }
    }
  });
  return {a, b};
}

// γ̂ = Σ_k π_{n,g,k} γ_k and β̂ likewise (Eq. 6): two contiguous (N, C) tensors.
std::vector<Tensor> mix_sets(const Tensor& pi, const Tensor& weight, const Tensor& bias) {
  const int64_t n = pi.size(0), g = pi.size(1), k = pi.size(2), c = weight.size(1);
  const int64_t m = c / g;
  Tensor scale = at::empty({n, c}, weight.options()), shift = at::empty({n, c}, weight.options());
  Tensor pic = pi.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sepbn_mix_sets", [&] {
    const scalar_t* pp = pic.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* sp = scale.mutable_data_ptr<scalar_t>();
    scalar_t* hp = shift.mutable_data_ptr<scalar_t>();
    // Channels innermost (vectorized), the K sets accumulated one after the other.
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t gi = 0; gi < g; ++gi) {
        const scalar_t* weights = pp + (s * g + gi) * k;
        scalar_t* so = sp + s * c + gi * m;
        scalar_t* ho = hp + s * c + gi * m;
        std::fill(so, so + m, scalar_t(0));
        std::fill(ho, ho + m, scalar_t(0));
        for (int64_t ki = 0; ki < k; ++ki) {
          axpy(wp + ki * c + gi * m, so, m, weights[ki]);
          axpy(bp + ki * c + gi * m, ho, m, weights[ki]);
        }
      }
    }
  });
  return {scale, shift};
}

// Small matrix products of the attention, as plain loops: ATen's GEMM costs tens of
// microseconds per call at these sizes (a thread wake-up and packing), more than the
// arithmetic. out = op(A) · B (+ bias per column), with op(A) = A or Aᵀ:
// - `b_rows_are_columns` false: B is (k, n) row-major; i-k-j order, vectorized along n;
// - true: B is given as (n, k) row-major (the product is A · Bᵀ); dot products along k.
Tensor small_matmul(const Tensor& a_in, bool transpose_a, const Tensor& b_in,
                    bool b_rows_are_columns, const Tensor& bias = Tensor()) {
  Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  const int64_t n = b_rows_are_columns ? b.size(0) : b.size(1);
  TORCH_CHECK((b_rows_are_columns ? b.size(1) : b.size(0)) == k, "small_matmul: sizes differ");
  Tensor out = at::empty({m, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sepbn_small_matmul", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* cp = bias.defined() ? bias.contiguous().const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t a_row = transpose_a ? 1 : k, a_col = transpose_a ? m : 1;
    for (int64_t i = 0; i < m; ++i) {
      scalar_t* o = op + i * n;
      if (b_rows_are_columns) {
        for (int64_t j = 0; j < n; ++j) {
          scalar_t acc = 0;
          const scalar_t* bj = bp + j * k;
          if (!transpose_a) {
            acc = dot(ap + i * k, bj, k);
          } else {
            for (int64_t q = 0; q < k; ++q) acc += ap[i * a_row + q * a_col] * bj[q];
          }
          o[j] = acc + (cp != nullptr ? cp[j] : scalar_t(0));
        }
      } else {
        for (int64_t j = 0; j < n; ++j) o[j] = cp != nullptr ? cp[j] : scalar_t(0);
        for (int64_t q = 0; q < k; ++q) {
          axpy(bp + q * n, o, n, ap[i * a_row + q * a_col]);
        }
      }
    }
  });
  return out;
}

// Column sums of a (rows, n) matrix: the bias gradients.
Tensor column_sums(const Tensor& a_in) {
  Tensor a = a_in.contiguous();
  const int64_t rows = a.size(0), n = a.size(1);
  Tensor out = at::zeros({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sepbn_column_sums", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r) axpy(ap + r * n, op, n, scalar_t(1));
  });
  return out;
}

// softmax(logits / τ) over the last dimension (K); a few dozen values, so a plain loop
// costs less than an ATen call.
Tensor softmax_with_temperature(const Tensor& logits, double tau) {
  Tensor lc = logits.contiguous();
  Tensor pi = at::empty_like(lc);
  const int64_t k = lc.size(-1), rows = lc.numel() / k;
  AT_DISPATCH_FLOATING_TYPES(lc.scalar_type(), "sepbn_softmax", [&] {
    const scalar_t* lp = lc.const_data_ptr<scalar_t>();
    scalar_t* pp = pi.mutable_data_ptr<scalar_t>();
    const scalar_t inv = static_cast<scalar_t>(1.0 / tau);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* l = lp + r * k;
      scalar_t* o = pp + r * k;
      scalar_t top = l[0] * inv;
      for (int64_t j = 1; j < k; ++j) top = std::max(top, l[j] * inv);
      scalar_t total = 0;
      for (int64_t j = 0; j < k; ++j) total += (o[j] = std::exp(l[j] * inv - top));
      for (int64_t j = 0; j < k; ++j) o[j] /= total;
    }
  });
  return pi;
}

// Backward of the mixing (Eq. 6) and of the temperature softmax (Eq. 5), from the
// per-(n, c) gradients s2 = ∂L/∂γ̂ and s1 = ∂L/∂β̂. Returns (∂L/∂γ (K, C), ∂L/∂β (K, C))
// and, when `logits_grad`, ∂L/∂logits (N, G·K) as a third tensor.
std::vector<Tensor> mix_backward(const Tensor& s1, const Tensor& s2, const Tensor& pi,
                                 const Tensor& weight, const Tensor& bias, double tau,
                                 bool logits_grad) {
  const int64_t n = pi.size(0), g = pi.size(1), k = pi.size(2), c = weight.size(1), m = c / g;
  Tensor grad_w = at::zeros({k, c}, weight.options()), grad_b = at::zeros({k, c}, weight.options());
  Tensor grad_logits = at::empty({n, g * k}, weight.options());
  Tensor pic = pi.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "sepbn_mix_backward", [&] {
    const scalar_t* s1p = s1.const_data_ptr<scalar_t>();
    const scalar_t* s2p = s2.const_data_ptr<scalar_t>();
    const scalar_t* pp = pic.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
    scalar_t* gl = grad_logits.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> grad_pi(k);
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t gi = 0; gi < g; ++gi) {
        const scalar_t* weights = pp + (s * g + gi) * k;
        std::fill(grad_pi.begin(), grad_pi.end(), scalar_t(0));
        for (int64_t ki = 0; ki < k; ++ki) {
          const scalar_t pk = weights[ki];
          scalar_t* gwk = gw + ki * c + gi * m;
          scalar_t* gbk = gb + ki * c + gi * m;
          const scalar_t* wk = wp + ki * c + gi * m;
          const scalar_t* bk = bp + ki * c + gi * m;
          const scalar_t* a2 = s2p + s * c + gi * m;
          const scalar_t* a1 = s1p + s * c + gi * m;
          scalar_t acc = 0;
          for (int64_t mi = 0; mi < m; ++mi) {
            gwk[mi] += pk * a2[mi];
            gbk[mi] += pk * a1[mi];
            acc += a2[mi] * wk[mi] + a1[mi] * bk[mi];
          }
          grad_pi[ki] = acc;
        }
        if (!logits_grad) continue;
        scalar_t dot = 0;
        for (int64_t ki = 0; ki < k; ++ki) dot += weights[ki] * grad_pi[ki];
        scalar_t* out = gl + (s * g + gi) * k;
        for (int64_t ki = 0; ki < k; ++ki)
          out[ki] = weights[ki] * (grad_pi[ki] - dot) / static_cast<scalar_t>(tau);
      }
    }
  });
  if (!logits_grad) return {grad_w, grad_b};
  return {grad_w, grad_b, grad_logits};
}

// grad *= (hidden > 0), the ReLU's backward, in place.
void relu_backward_(Tensor& grad, const Tensor& hidden) {
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sepbn_relu_backward", [&] {
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    const scalar_t* hp = hidden.const_data_ptr<scalar_t>();
    for (int64_t j = 0; j < grad.numel(); ++j) gp[j] = hp[j] > 0 ? gp[j] : scalar_t(0);
  });
}

// The attention MLP from pooled rows: returns (flat, hidden, pi) with flat (N, T·T·G).
std::vector<Tensor> attention(const Tensor& positions, int64_t n, const Tensor& reduce_w,
                              const Tensor& reduce_b, const Tensor& fc1_w, const Tensor& fc1_b,
                              const Tensor& fc2_w, const Tensor& fc2_b, const Tensor& tau,
                              int64_t k, bool hard) {
  const int64_t g = reduce_w.size(0);
  const Tensor rw = reduce_w.view({g, -1});  // the 1x1 convolution's (G, C, 1, 1) as (G, C)
  Tensor flat = small_matmul(positions, false, rw, true, reduce_b).view({n, -1});
  Tensor hidden = small_matmul(flat, false, fc1_w, true, fc1_b).relu_();  // fc1, ReLU
  Tensor logits = small_matmul(hidden, false, fc2_w, true, fc2_b).view({n, g, k});  // fc2
  Tensor pi;
  if (hard) {
    pi = at::zeros_like(logits).scatter_(-1, logits.argmax(-1, true), 1.0);
  } else {
    pi = softmax_with_temperature(logits, tau.item<double>());  // Eq. 5
  }
  return {flat, hidden, pi};
}

// running = (1 - factor) running + factor batch, as nn.BatchNorm2d updates them (the op
// `running_update`; the variance's batch value is the unbiased one).
void running_update(const c10::optional<Tensor>& running_mean,
                    const c10::optional<Tensor>& running_var, const Tensor& mean,
                    const Tensor& unbiased, double factor) {
  for (const auto& [running, batch] :
       {std::pair{running_mean, mean}, std::pair{running_var, unbiased}}) {
    if (!running.has_value() || !running->defined()) continue;
    Tensor r = *running;
    if (r.scalar_type() != batch.scalar_type() || !r.is_contiguous()) {
      r.mul_(1.0 - factor).add_(batch.to(r.scalar_type()), factor);
      continue;
    }
    // A loop over C values costs less than two ATen calls.
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "sepbn_running_update", [&] {
      scalar_t* rp = r.mutable_data_ptr<scalar_t>();
      const Tensor bc = batch.contiguous();
      const scalar_t* bp = bc.const_data_ptr<scalar_t>();
      const scalar_t keep = static_cast<scalar_t>(1.0 - factor), take = static_cast<scalar_t>(factor);
      for (int64_t ch = 0; ch < r.numel(); ++ch) rp[ch] = rp[ch] * keep + take * bp[ch];
    });
  }
}

// The normalization's backward, one channel at a time so that the second pass over the
// channel's N planes finds them in cache (as ATen's batch-norm backward does). With
// g = ∂L/∂y: s1 = Σ_hw g = ∂L/∂β̂ and s2 = Σ_hw g x̂ = ∂L/∂γ̂ per (n, c), and, when
// `need_input`, ∂L/∂x = r (γ̂ g - c1 - x̂ c2) with c1 = Σ_n γ̂ s1 / M, c2 = Σ_n γ̂ s2 / M
// (the batch-norm backward applied to γ̂ g, with x̂ = (x - μ) r and M = N·H·W).
// Returns (s1, s2, ∂L/∂x or an empty tensor).
// `scale` must be contiguous; `sums` holds the preallocated (s1, s2, ∂L/∂x or empty).
void norm_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& scale,
                        const Tensor& mean, const Tensor& rstd, bool need_input,
                        std::vector<Tensor>& sums, const Share* share = nullptr) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const double count = static_cast<double>(n * hw);
  Tensor &s1 = sums[0], &s2 = sums[1], &gx = sums[2];
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sepbn_norm_backward", [&] {
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    scalar_t* s1p = s1.mutable_data_ptr<scalar_t>();
    scalar_t* s2p = s2.mutable_data_ptr<scalar_t>();
    scalar_t* op = need_input ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    for_share(share, c, channel_grain(n, hw), [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        const scalar_t mu = mp[ch], r = rp[ch];
        double sum1 = 0.0, sum2 = 0.0;  // Σ_n γ̂ s1, Σ_n γ̂ s2
        for (int64_t s = 0; s < n; ++s) {
          const int64_t plane = s * c + ch;
          const scalar_t* g = gp + plane * hw;
          const scalar_t* v = xp + plane * hw;
          double t1 = 0.0, t2 = 0.0;
          for (int64_t b = 0; b < hw; b += kChunk) {
            scalar_t a1 = 0, a2 = 0;
            centred_dot(g + b, v + b, std::min(hw, b + kChunk) - b, mu, &a1, &a2);
            t1 += a1;
            t2 += a2;
          }
          s1p[plane] = static_cast<scalar_t>(t1);
          s2p[plane] = static_cast<scalar_t>(t2 * static_cast<double>(r));
          sum1 += static_cast<double>(sp[plane]) * s1p[plane];
          sum2 += static_cast<double>(sp[plane]) * s2p[plane];
        }
        if (op == nullptr) continue;
        const double rd = static_cast<double>(r);
        const scalar_t d = static_cast<scalar_t>(-rd * sum1 / count);       // -r c1
        const scalar_t q = static_cast<scalar_t>(-rd * rd * sum2 / count);  // -r² c2
        for (int64_t s = 0; s < n; ++s) {
          const int64_t plane = s * c + ch;
          grad_combine(gp + plane * hw, xp + plane * hw, op + plane * hw, hw, sp[plane] * r, q,
                       mu, d);
        }
      }
    });
  });
}

std::vector<Tensor> allocate_norm_backward(const Tensor& x, bool need_input) {
  const int64_t n = x.size(0), c = x.size(1);
  return {at::empty({n, c}, x.options()), at::empty({n, c}, x.options()),
          need_input ? map_like(x) : at::empty({0}, x.options())};
}

// gx[n, c, index[n, c, t]] += grad_pooled[n·T·T + t, c]: the pooling's backward, at the
// arg-max of every window (a window's maximum may repeat across overlapping windows).
// The channels are split as norm_backward splits them (channel_grain), so each thread
// updates the planes it has just written, still in its own core's cache (a scatter over
// planes by one thread fetched half its lines from the other core); the channel loop
// innermost reads the pooled gradient's rows contiguously. (Deferring norm_backward's
// input pass until the pooled gradient is known, to add it while each plane is in L1,
// measured slower: that pass then reads g and x back from L3.)
void scatter_pooled_(Tensor& gx, const Tensor& grad_pooled, const Tensor& index,
                     const Share* share = nullptr) {
  const int64_t n = gx.size(0), c = gx.size(1), hw = gx.size(2) * gx.size(3);
  const int64_t tt = index.size(2);
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "sepbn_scatter_pooled", [&] {
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    const scalar_t* pooled = grad_pooled.const_data_ptr<scalar_t>();
    const int32_t* where = index.const_data_ptr<int32_t>();
    for_share(share, c, channel_grain(n, hw), [&](int64_t begin, int64_t end) {
      for (int64_t s = 0; s < n; ++s) {
        for (int64_t t = 0; t < tt; ++t) {
          const scalar_t* row = pooled + (s * tt + t) * c;
          for (int64_t ch = begin; ch < end; ++ch) {
            const int64_t plane = s * c + ch;
            op[plane * hw + where[plane * tt + t]] += row[ch];
          }
        }
      }
    });
  });
}

// The NHWC backward's first pass: s1, s2 of every sample (into the preallocated sums).
void nhwc_backward_sums_into(const Tensor& grad_y, const Tensor& x, const Tensor& mean,
                             const Tensor& rstd, std::vector<Tensor>& sums, const Share* share) {
  const int64_t c = x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sepbn_nhwc_backward_sums", [&] {
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* s1p = sums[0].mutable_data_ptr<scalar_t>();
    scalar_t* s2p = sums[1].mutable_data_ptr<scalar_t>();
    for_share(share, x.size(0), sample_grain(x), [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        nhwc_backward_sums(gp + s * hw * c, xp + s * hw * c, hw, c, mp, rp, s1p + s * c,
                           s2p + s * c);
      }
    });
  });
}

// The NHWC backward's last pass: ∂L/∂x = r (γ̂ g) + q (x - μ) + d per sample, then, when
// `grad_pooled` is defined, the pooling's gradient added at each window's arg-max.
void nhwc_input_grad_into(const Tensor& grad_y, const Tensor& x, const Tensor& scale,
                          const Tensor& mean, const Tensor& rstd, const std::vector<Tensor>& dq,
                          Tensor& gx, const Tensor& grad_pooled, const Tensor& index,
                          const Share* share) {
  const int64_t c = x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sepbn_nhwc_input_grad", [&] {
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* dp = dq[0].const_data_ptr<scalar_t>();
    const scalar_t* qp = dq[1].const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    const scalar_t* pooled =
        grad_pooled.defined() ? grad_pooled.const_data_ptr<scalar_t>() : nullptr;
    const int32_t* where = grad_pooled.defined() ? index.const_data_ptr<int32_t>() : nullptr;
    const int64_t tt = grad_pooled.defined() ? index.size(2) : 0;
    for_share(share, x.size(0), sample_grain(x), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> a(c);
      for (int64_t s = begin; s < end; ++s) {
        for (int64_t j = 0; j < c; ++j) a[j] = sp[s * c + j] * rp[j];
        for (int64_t p = 0; p < hw; ++p) {
          const int64_t row = (s * hw + p) * c;
          row_grad_combine(gp + row, xp + row, op + row, a.data(), qp, mp, dp, c);
        }
        if (pooled == nullptr) continue;
        scalar_t* gs = op + s * hw * c;
        for (int64_t win = 0; win < tt; ++win) {
          const scalar_t* grad_row = pooled + (s * tt + win) * c;
          for (int64_t j = 0; j < c; ++j) gs[where[(s * c + j) * tt + win] * c + j] += grad_row[j];
        }
      }
    });
  });
}

// ---- ops -----------------------------------------------------------------------------

// Train-mode SepBatchNorm2d forward (Eqs. 1, 5-7): the pooling-and-statistics pass, the
// attention, and, if `apply`, the pass over the map, y = a x + b. Returns (y, pi, mean,
// var_unbiased), what the backward takes (index, positions, flat, hidden, scale, rstd), and
// (a, b) per (n, c). Without `apply` y is empty and the caller computes it from a and b:
// inside torch.compile that pass is then ATen code, which inductor fuses with the ops after
// the layer (an activation, a pooling), as it fuses a BatchNorm's.
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                           Tensor, Tensor, Tensor, Tensor>;
Outputs train_forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                      const Tensor& reduce_w, const Tensor& reduce_b, const Tensor& fc1_w,
                      const Tensor& fc1_b, const Tensor& fc2_w, const Tensor& fc2_b,
                      const Tensor& tau, double eps, int64_t pool_size, bool hard, bool apply) {
  const Tensor x = checked_map(x_in, "x");
  const int64_t n = x.size(0), hw = x.size(2) * x.size(3);
  Tensor positions, index, plane_mean, plane_m2, rstd;
  Tensor y = apply ? map_like(x) : at::empty({0}, x.options());
  allocate_pooling(x, pool_size, positions, &index, &plane_mean, &plane_m2);
  std::vector<Tensor> att, mixed, stats, ab;
  const auto [units, grain] = pooling_units(x, true);
  run_phased(
      team_size(units, grain),
      [&](const Share* share) {
        pool_and_moments(x, pool_size, positions, &index, &plane_mean, &plane_m2, share);
      },
      [&] {
        att = attention(positions, n, reduce_w, reduce_b, fc1_w, fc1_b, fc2_w, fc2_b, tau,
                        weight.size(0), hard);
        mixed = mix_sets(att[2], weight, bias);
        stats = combine_moments(plane_mean, plane_m2, hw, x.scalar_type());
        rstd = inverse_std(stats[1], eps, x.scalar_type());
        ab = fold(mixed[0], mixed[1], stats[0], rstd);
      },
      [&](const Share* share) {
        if (apply) scale_shift_into(x, ab[0], ab[1], y, kGrainElements, share);
      });
  return {y,         att[2], stats[0], stats[2], index, positions, att[0], att[1],
          mixed[0], rstd,   ab[0],    ab[1]};
}

// Its backward. Returns the gradients of (x, weight, bias, reduce_w, reduce_b, fc1_w, fc1_b,
// fc2_w, fc2_b); one that was not asked for is an empty tensor. The biases are passed for
// a schema that mirrors the forward's inputs; their values are not needed.
using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
Grads train_backward(const Tensor& grad_y_in, const Tensor& x_in, const Tensor& weight,
                     const Tensor& bias, const Tensor& reduce_w, const Tensor& /*reduce_b*/,
                     const Tensor& fc1_w, const Tensor& /*fc1_b*/, const Tensor& fc2_w,
                     const Tensor& /*fc2_b*/, const Tensor& tau, const Tensor& pi,
                     const Tensor& positions, const Tensor& index, const Tensor& flat,
                     const Tensor& hidden, const Tensor& scale, const Tensor& mean,
                     const Tensor& rstd, bool need_input, bool need_attention) {
  const Tensor x = checked_map(x_in, "x");
  Tensor grad_y = grad_y_in.contiguous(x.suggest_memory_format()), scale_c = scale.contiguous();
  const int64_t g = reduce_w.size(0);
  const double temperature = tau.item<double>();
  auto sums = allocate_norm_backward(x, need_input);  // ∂L/∂β̂, ∂L/∂γ̂, ∂L/∂x
  Tensor empty = at::empty({0}, x.options());
  std::vector<Tensor> out{empty, empty, empty, empty, empty, empty, empty, empty, empty};
  Tensor grad_pooled;
  // The attention's backward, between the normalization's pass and the pooling's scatter.
  auto middle = [&] {
    // Eq. 6 backward to the sets (K, C) and, through π, Eq. 5 backward to the logits.
    auto mixed = mix_backward(sums[0], sums[1], pi, weight, bias, temperature, need_attention);
    out[1] = mixed[0];
    out[2] = mixed[1];
    if (!need_attention) return;
    const Tensor& grad_logits = mixed[2];
    out[7] = small_matmul(grad_logits, true, hidden, false);  // fc2
    out[8] = column_sums(grad_logits);
    Tensor grad_hidden = small_matmul(grad_logits, false, fc2_w, false);
    relu_backward_(grad_hidden, hidden);
    out[5] = small_matmul(grad_hidden, true, flat, false);  // fc1
    out[6] = column_sums(grad_hidden);
    Tensor grad_reduced = small_matmul(grad_hidden, false, fc1_w, false).view({-1, g});
    out[3] = small_matmul(grad_reduced, true, positions, false).view(reduce_w.sizes());
    out[4] = column_sums(grad_reduced);
    if (need_input) grad_pooled = small_matmul(grad_reduced, false, reduce_w.view({g, -1}), false);
  };
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  if (channels_last(x)) {
    std::vector<Tensor> dq;
    run_phased(
        team_size(n, sample_grain(x)),
        [&](const Share* share) { nhwc_backward_sums_into(grad_y, x, mean, rstd, sums, share); },
        [&] {
          if (need_input) dq = nhwc_channel_coefficients(sums[0], sums[1], scale_c, rstd, hw);
          middle();
        },
        [&](const Share* share) {
          if (need_input) {
            nhwc_input_grad_into(grad_y, x, scale_c, mean, rstd, dq, sums[2], grad_pooled, index,
                                 share);
          }
        });
  } else {
    run_phased(
        team_size(c, channel_grain(n, hw)),
        [&](const Share* share) {
          norm_backward_into(grad_y, x, scale_c, mean, rstd, need_input, sums, share);
        },
        middle,
        [&](const Share* share) {
          if (grad_pooled.defined()) scatter_pooled_(sums[2], grad_pooled, index, share);
        });
  }
  if (need_input) out[0] = sums[2];
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8]};
}

// Eval-mode SepBatchNorm2d with running statistics: the whole layer, returns (y, pi).
std::tuple<Tensor, Tensor> eval_forward(const Tensor& x_in, const Tensor& weight,
                                        const Tensor& bias, const Tensor& reduce_w,
                                        const Tensor& reduce_b, const Tensor& fc1_w,
                                        const Tensor& fc1_b, const Tensor& fc2_w,
                                        const Tensor& fc2_b, const Tensor& tau,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        double eps, int64_t pool_size, bool hard) {
  const Tensor x = checked_map(x_in, "x");
  Tensor positions, y = map_like(x);
  allocate_pooling(x, pool_size, positions, nullptr, nullptr, nullptr);
  std::vector<Tensor> att, ab;
  const auto [units, grain] = pooling_units(x, false);
  run_phased(
      team_size(units, grain),
      [&](const Share* share) {
        pool_and_moments(x, pool_size, positions, nullptr, nullptr, nullptr, share);
      },
      [&] {
        att = attention(positions, x.size(0), reduce_w, reduce_b, fc1_w, fc1_b, fc2_w, fc2_b,
                        tau, weight.size(0), hard);
        auto mixed = mix_sets(att[2], weight, bias);
        Tensor rstd = inverse_std(running_var, eps, x.scalar_type());
        ab = fold(mixed[0], mixed[1], running_mean, rstd);
      },
      [&](const Share* share) {
        scale_shift_into(x, ab[0], ab[1], y, inference_grain_elements(), share);
      });
  return {y, att[2]};
}

}  // namespace

TORCH_LIBRARY(sepbn_cpu, m) {
  // Ops over maps take NCHW or channels-last memory: inside torch.compile inductor may hand
  // them the layout it chose (channels-last convolution outputs) instead of copying to the
  // traced NCHW strides; the fake functions state the output layout (map_like).
  const std::vector<at::Tag> kMapLayout{at::Tag::flexible_layout};
  m.def(
      "train_forward(Tensor x, Tensor weight, Tensor bias, Tensor reduce_weight, "
      "Tensor reduce_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
      "Tensor fc2_bias, Tensor tau, float eps, int pool_size, bool hard, bool apply=True) -> "
      "(Tensor y, Tensor pi, Tensor mean, Tensor var_unbiased, Tensor index, "
      "Tensor positions, Tensor flat, Tensor hidden, Tensor scale, Tensor rstd, Tensor a, "
      "Tensor b)",
      kMapLayout);
  m.def(
      "train_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias, "
      "Tensor reduce_weight, Tensor reduce_bias, Tensor fc1_weight, Tensor fc1_bias, "
      "Tensor fc2_weight, Tensor fc2_bias, Tensor tau, Tensor pi, Tensor positions, "
      "Tensor index, Tensor flat, Tensor hidden, Tensor scale, Tensor mean, Tensor rstd, "
      "bool need_input, bool need_attention) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)",
      kMapLayout);
  m.def(
      "eval_forward(Tensor x, Tensor weight, Tensor bias, Tensor reduce_weight, "
      "Tensor reduce_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
      "Tensor fc2_bias, Tensor tau, Tensor running_mean, Tensor running_var, float eps, "
      "int pool_size, bool hard) -> (Tensor y, Tensor pi)",
      kMapLayout);
  m.def(
      "running_update(Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor mean, "
      "Tensor var_unbiased, float factor) -> ()");
}

TORCH_LIBRARY_IMPL(sepbn_cpu, CPU, m) {
  m.impl("train_forward", &train_forward);
  m.impl("train_backward", &train_backward);
  m.impl("eval_forward", &eval_forward);
  m.impl("running_update", &running_update);
}

}  // namespace sepbn_cpu
