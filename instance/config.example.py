# Copy to instance/config.py and edit. Environment variables FACEAPP_<KEY> override this file.
# Every key and its default: faceapp/config.py (DEFAULTS) and README.md, "Configuration".

# MODEL_NAME = "openai/clip-vit-base-patch32"   # a hub id (pulled into MODELS_DIR) or a folder
# DEVICE = "auto"                               # auto, cpu, cuda, cuda:N, mps
# DTYPE = "float32"                             # float32, bfloat16, float16
# INFERENCE_MAX_BATCH = 8                       # images per forward pass, across requests
# INFERENCE_TIMEOUT = 60                        # s a request waits for the model: then 503 model.busy
# STORE_URL = "redis://127.0.0.1:6379/0"        # default: the store/ folder in this instance folder
# API_KEYS = "key-for-app-a,key-for-app-b"    # needed on /api and on the /app pages too
# ADMIN_KEYS = "a-long-random-admin-key"
# TESTER_ENABLED = False                        # the /app pages for QA staff
# SECRET_KEY = "..."   # signs the tester's CSRF tokens and session; default: instance/secret_key
# SESSION_COOKIE_SECURE = True                  # always Secure (it already is on https requests)
# MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# URL_ALLOWED_HOSTS = "images.example.com"
# TRUSTED_PROXY_HOPS = 1                        # behind one nginx (docs/SECURITY.md); default 0
# RATELIMIT = "100 per second; 3000 per minute" # per API key (no keys: per address), /api and
#                                               # /app; Redis-shared when STORE_URL is redis://
# RATELIMIT_ENABLED = False                     # benchmarks and load tests only
# METRICS_ENABLED = True                        # GET /metrics for Prometheus (README, "Metrics")
# METRICS_PUBLIC = False                        # True: no admin key needed (keep it internal)
