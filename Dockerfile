# The contract-extracts image: the official Airflow 3.3 image (Python 3.11) plus this project, installed with
# the pinned constraints, its DAGs and its UI plugin, the recipient-side tools (age, gnupg, openssh-client),
# the PostgreSQL client (psql: the fast extraction route, docs/extraction.md) and mysqlclient (the C
# MySQL/MariaDB driver of the MySQL/MariaDB fast route).
# It carries no secrets, no contract files and no keys: mount or inject those at run time (docs/deploy.md).
#
#   docker build -t contract-extracts:0.1.0 .
#   docker run --rm contract-extracts:0.1.0 airflow version
FROM apache/airflow:3.3.2-python3.11

USER 0
# Debian's own versions of these tools, kept current by rebuilding on the base image's updates.
# mysqlclient has no Linux wheel on PyPI and recent official images may not ship it (apache/airflow#57146),
# so the project install below compiles it: MariaDB Connector/C (libmariadb3 at run time, libmariadb-dev
# found through pkg-config) and a C compiler (gcc, libc6-dev); the base image's Python has its own headers.
# The project's build hook compiles masking's keyed-hashing extension against OpenSSL's libcrypto (libssl-dev).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends age gnupg openssh-client postgresql-client \
    libmariadb3 libmariadb-dev pkg-config gcc libc6-dev libssl-dev \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# The image's airflow user (uid 50000, group 0, as in the official image).
USER 50000
WORKDIR /opt/contract-extracts
# The build context is the installable project only (.dockerignore): pyproject.toml, the stage packages at
# the top level, dags/ and plugins/ (whose airflow_glue package the wheel installs as a top-level package).
COPY --chown=50000:0 . ./
# The constraints pin apache-airflow to the base image's 3.3.2, so the install cannot move Airflow itself.
RUN pip install --no-cache-dir -c constraints.txt . \
 && python -c "import airflow_glue.ui, pipeline.stages, MySQLdb"

COPY --chown=50000:0 dags /opt/airflow/dags
COPY --chown=50000:0 plugins /opt/airflow/plugins

# Contract files and the approver registry are mounted here (a volume or a ConfigMap), never baked in.
ENV CONTRACT_EXTRACTS_CONFIG_DIR=/opt/airflow/contract-configs \
    CONTRACT_EXTRACTS_HOME=/opt/airflow/contract-extracts \
    GX_ANALYTICS_ENABLED=false
WORKDIR /opt/airflow
