# The image of both the api and the projector services in docker-compose.yml.
FROM python:3.11-slim

# psycopg (pure Python here) talks to PostgreSQL through the system's libpq.
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY projections projections
COPY api api
COPY cli cli
RUN pip install --no-cache-dir . && useradd --system --no-create-home ledger

USER ledger
EXPOSE 8000
CMD ["ledger", "serve", "--host", "0.0.0.0", "--port", "8000"]
