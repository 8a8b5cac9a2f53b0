/* C API of the chaosgen network "dropout" (tests/nets/dropout.net).
   This one header is #included by the generated C++ and handed to cffi's cdef,
   so the C++ compiler checks every signature that the Python loader trusts. */

typedef struct cg_config {
    int threads;          /* OpenMP threads, one network instance each */
    int scheme;           /* 0 chaos, 1 hogwild, 2 delayed, 3 averaged (sequential = chaos, 1 thread) */
    float eta;            /* learning rate of this epoch */
    int update_every;     /* delayed: apply a worker's accumulated gradient every k images */
    int batch;            /* averaged: images per synchronous step */
    volatile int *stop;   /* set to non-zero (from another thread) to stop picking images */
    volatile long *progress; /* if not NULL: images picked so far, updated now and then */
    long long seed;       /* dropout masks: hash of (seed, epoch, the image's index in images) */
    int epoch;            /* from 0 */
    /* The update rule (chaosgen/update.py): all 0 and NULL is the paper's P -= eta g. */
    float momentum;       /* in [0, 1): torch.optim.SGD's v = momentum v + g, P -= eta v */
    int nesterov;         /* 1: P -= eta (g + momentum v) */
    float weight_decay;   /* L2: g += weight_decay x decay_mult x P */
    float *velocity;      /* n_params floats beside params when momentum > 0, else NULL */
    const float *mults;   /* per block: lr_mult, decay_mult, bias_lr_mult, bias_decay_mult; NULL: 1 */
    int lr_policy;        /* 0: eta for the whole call; 1 step, 2 inv, 3 cosine: eta(iter) */
    double gamma, power;  /* step, inv */
    long step_size;       /* step: iterations per factor gamma */
    long iter0;           /* iterations (images; averaged: steps) of the run before this call */
    long max_iter;        /* cosine: iterations of the whole run */
    int dense_update;     /* dense layers' update: 0 the runtime decides, 1 locked segments, 2 owner-applied */
    double *trace;        /* if not NULL: per dense block, n records (eta, image index, x, dz) in the
                             order they were applied, for the owner-applied ones (tests) */
} cg_config;

typedef struct cg_stats {
    double loss;          /* summed loss over the images processed */
    long errors;          /* wrongly classified images */
    long images;          /* images processed (fewer than asked if stopped) */
    double seconds;       /* wall time of the call */
    int threads;          /* OpenMP threads that ran (OMP_THREAD_LIMIT can give fewer than asked) */
    unsigned long long owner_blocks; /* bit b: block b's update was owner-applied */
} cg_stats;

int cg_n_params(void);
int cg_image_size(void);
int cg_image_stride(void);
int cg_output_size(void);
int cg_work_floats(void);
int cg_n_layers(void);
const char *cg_ir_hash(void);
void cg_forward(const float *params, float *work, const float *image, float *output);
float cg_gradients(const float *params, float *work, const float *image, int label, float *grads);
int cg_train(float *params, const float *images, const int *labels, const int *order, long n,
             const cg_config *config, cg_stats *stats, double *profile);
int cg_evaluate(const float *params, const float *images, const int *labels, long n, int threads,
                cg_stats *stats);
int cg_forward_batch(const float *params, const float *images, long n, int threads, float *outputs);
int cg_threads(int requested);
/* Dropout (training only): each dropout layer's keep flags for one image, in layer order (returns
   their count); the gradients of one image under that mask. */
int cg_dropout_masks(long long seed, int epoch, long index, unsigned char *keep);
float cg_gradients_dropout(const float *params, float *work, const float *image, int label, float *grads,
                           long long seed, int epoch, long index);
