/* Dropout's counter-based random numbers: no state, so any thread can reproduce any mask.
   cg_mix64 is splitmix64's output function (Steele, Lea, Flood 2014; Vigna's splitmix64.c).
   An image's key hashes (seed, epoch, the image's index in the dataset); a dropout layer's key
   hashes the image key with the layer's ordinal; unit u of the layer gets
   cg_mix64(layer key + (u + 1) * CG_GOLDEN), the (u + 1)-th splitmix64 output of that key, and
   is dropped when its top 24 bits are below round(rate * 2^24). A key of 0 means "evaluation". */
#define CG_GOLDEN 0x9E3779B97F4A7C15ULL
static inline uint64_t cg_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint64_t cg_dropout_key(uint64_t seed, uint64_t epoch, uint64_t index) {
    const uint64_t k = cg_mix64(cg_mix64(cg_mix64(seed + CG_GOLDEN) ^ (epoch + CG_GOLDEN)) ^ (index + CG_GOLDEN));
    return k | 1;  // never 0
}
