# The image of both the api and the projector services in docker-compose.yml. It needs no
# system libpq: psycopg's binary wheel (pyproject.toml) brings its own.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY projections projections
COPY api api
COPY cli cli
COPY audit audit
RUN pip install --no-cache-dir . && useradd --system --no-create-home ledger

USER ledger
EXPOSE 8000
CMD ["ledger", "serve", "--host", "0.0.0.0", "--port", "8000"]
