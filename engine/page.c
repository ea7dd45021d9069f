/* SPDX-License-Identifier: MIT */
/*
 * page.c - zero detection and page checksums.
 *
 * The page hash runs eight independent 64-bit lanes. Each word is mixed
 * with a key that depends on its lane and block, so moving data within the
 * page changes the result; the lane update is a 32x32->64 multiply of the
 * keyed word's halves plus the raw word, which compilers turn into SIMD
 * (pmuludq) and which costs well under the time to send the page. The
 * lanes are folded with a multiply-rotate finaliser.
 */
#include <string.h>

#include "page.h"
#include "precopy.h"

#define WORDS (PRECOPY_PAGE_SIZE / 8)
#define LANES 8

static const uint64_t lane_key[LANES] = {
	0x9c1f6a3b52e4d807ull, 0x3d5be2a8c1f04976ull, 0xe8a42d17b6093fc5ull,
	0x51c7f9e03a2b6d84ull, 0xa6039bd4e5f1728cull, 0x2fe85c61d70b934aull,
	0xc4b1073f8e2a56d9ull, 0x7a2d94e6b0c3185full,
};

#define STEP 0x9e3779b97f4a7c15ull
#define MIX1 0xbf58476d1ce4e5b9ull
#define MIX2 0x94d049bb133111ebull

static inline uint64_t load64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

static inline uint64_t rotl(uint64_t v, int r)
{
	return v << r | v >> (64 - r);
}

static inline uint64_t fmix(uint64_t x)
{
	x ^= x >> 30;
	x *= MIX1;
	x ^= x >> 27;
	x *= MIX2;
	x ^= x >> 31;
	return x;
}

bool pc_page_is_zero(const void *p)
{
	const unsigned char *b = p;

	/* Most non-zero pages differ in their first bytes. */
	if (load64(b) | load64(b + 8))
		return false;
	for (size_t off = 0; off < PRECOPY_PAGE_SIZE; off += 256) {
		uint64_t acc = 0;

		for (size_t i = 0; i < 256; i += 8)
			acc |= load64(b + off + i);
		if (acc)
			return false;
	}
	return true;
}

/* Fold the lanes into the page hash. */
static inline uint64_t finish(const uint64_t *acc)
{
	uint64_t h = PRECOPY_PAGE_SIZE * STEP;

	for (int l = 0; l < LANES; l++)
		h = rotl(h ^ fmix(acc[l]), 27) * MIX1;
	return fmix(h);
}

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>

/*
 * The portable loop in BITS-wide registers (128: SSE2, 256: AVX2), PFX
 * being the intrinsics' prefix (_mm, _mm256): BITS / 64 lanes a register,
 * pmuludq for the 32x32->64 multiply. Bit for bit the same function as the
 * portable loop; the constant bounds unroll, so each width compiles to the
 * loop it would be written out by hand.
 */
#define HASH_WORDS_SIMD(name, attr, PFX, BITS)                                         \
	attr static uint64_t name(const unsigned char *b, uint64_t *or_out)              \
	{                                                                              \
		enum { PER = (BITS) / 64, NV = LANES / PER };                          \
		__m##BITS##i acc[NV], key[NV], any = PFX##_setzero_si##BITS();         \
		const __m##BITS##i step = PFX##_set1_epi64x((long long)(LANES * STEP)); \
		uint64_t out[LANES], o[PER];                                           \
                                                                                       \
		for (int v = 0; v < NV; v++) {                                         \
			acc[v] = PFX##_loadu_si##BITS(                                 \
				(const __m##BITS##i *)(lane_key + PER * v));           \
			key[v] = acc[v];                                               \
		}                                                                      \
		for (size_t i = 0; i < WORDS; i += LANES) {                            \
			for (int v = 0; v < NV; v++) {                                 \
				__m##BITS##i w = PFX##_loadu_si##BITS(                 \
					(const __m##BITS##i *)(b + 8 * i + 8 * PER * v)); \
				__m##BITS##i k = PFX##_xor_si##BITS(w, key[v]);        \
				__m##BITS##i p = PFX##_mul_epu32(k, PFX##_srli_epi64(k, 32)); \
                                                                                       \
				any = PFX##_or_si##BITS(any, w);                       \
				acc[v] = PFX##_add_epi64(acc[v], PFX##_add_epi64(p, w)); \
				key[v] = PFX##_add_epi64(key[v], step);                \
			}                                                              \
		}                                                                      \
		for (int v = 0; v < NV; v++)                                           \
			PFX##_storeu_si##BITS((__m##BITS##i *)(out + PER * v), acc[v]);  \
		PFX##_storeu_si##BITS((__m##BITS##i *)o, any);                         \
		*or_out = 0;                                                           \
		for (int j = 0; j < PER; j++)                                          \
			*or_out |= o[j];                                               \
		return finish(out);                                                    \
	}

/* SSE2: every x86-64 has it. */
HASH_WORDS_SIMD(hash_words_sse2, , _mm, 128)
/* AVX2: chosen at run time, so the library still runs on any x86-64. */
HASH_WORDS_SIMD(hash_words_avx2, __attribute__((target("avx2"))), _mm256, 256)

static uint64_t (*hash_impl)(const unsigned char *, uint64_t *);

static inline uint64_t hash_words(const unsigned char *b, uint64_t *or_out)
{
	uint64_t (*f)(const unsigned char *, uint64_t *) =
		__atomic_load_n(&hash_impl, __ATOMIC_RELAXED);

	if (!f) {
		__builtin_cpu_init();
		f = __builtin_cpu_supports("avx2") ? hash_words_avx2 : hash_words_sse2;
		__atomic_store_n(&hash_impl, f, __ATOMIC_RELAXED);
	}
	return f(b, or_out);
}
#else
static inline uint64_t hash_words(const unsigned char *b, uint64_t *or_out)
{
	uint64_t acc[LANES], any = 0;

	for (int l = 0; l < LANES; l++)
		acc[l] = lane_key[l];
	for (size_t i = 0; i < WORDS; i += LANES) {
		uint64_t blk = (uint64_t)i * STEP;

		for (int l = 0; l < LANES; l++) {
			uint64_t w = load64(b + 8 * (i + (size_t)l));
			uint64_t k = w ^ (lane_key[l] + blk);

			any |= w;
			acc[l] += (k & 0xffffffffull) * (k >> 32) + w;
		}
	}
	*or_out = any;
	return finish(acc);
}
#endif

uint64_t pc_page_hash(const void *p)
{
	uint64_t any;

	return hash_words(p, &any);
}

bool pc_page_scan(const void *p, uint64_t *hash)
{
	uint64_t any;

	*hash = hash_words(p, &any);
	return any == 0;
}

uint64_t pc_zero_page_hash(void)
{
	static const unsigned char zero[PRECOPY_PAGE_SIZE];

	return pc_page_hash(zero);
}

uint64_t pc_hash_combine(const uint64_t *hashes, size_t n)
{
	uint64_t h = fmix((uint64_t)n ^ STEP);

	for (size_t i = 0; i < n; i++)
		h = rotl(h ^ fmix(hashes[i] + (uint64_t)i * STEP), 29) * MIX2;
	return fmix(h);
}
