-- obsdb database roles (obsdb.database.roles; `obsdb init --create-roles` runs the same SQL).
-- Run as the owner of the obsdb tables with CREATEROLE (or a superuser), connected to the
-- obsdb database, after `obsdb init`. Idempotent: run it again after every upgrade.
-- Logins: CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE obsdb_researcher;
--         CREATE ROLE obsdb_worker LOGIN PASSWORD '...' IN ROLE obsdb_pipeline;

-- The two group roles (NOLOGIN: nobody logs in as them directly).
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'obsdb_researcher') THEN
    BEGIN
      CREATE ROLE obsdb_researcher NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile
    END;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'obsdb_pipeline') THEN
    BEGIN
      CREATE ROLE obsdb_pipeline NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
  END IF;
END
$roles$;

-- Rights on this database and its schema.
DO $grants$
DECLARE
  schema_name text := current_schema();
  obj record;
  researcher_tables text[] := ARRAY['v_lightcurve', 'v_sources', 'v_frames', 'v_zeropoints',
    'instruments', 'frames', 'masters', 'master_inputs', 'reductions', 'frame_solutions',
    'wcs_attachments', 'sources', 'measurements', 'zeropoints', 'ensembles', 'targets',
    'refcats', 'refcat_stars', 'alembic_version'];
BEGIN
  EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO obsdb_researcher, obsdb_pipeline',
                 current_database());
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', schema_name);
  EXECUTE format('REVOKE ALL ON SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO obsdb_researcher, obsdb_pipeline', schema_name);

  -- Start from nothing on every table, view, sequence and function of the schema.
  EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM PUBLIC, obsdb_researcher, obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC', schema_name);

  -- Researcher: SELECT on the views and the science tables, EXECUTE on obsdb_* functions.
  FOR obj IN SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = schema_name AND c.relkind IN ('r', 'v', 'p', 'm')
               AND c.relname = ANY (researcher_tables) LOOP
    EXECUTE format('GRANT SELECT ON %I.%I TO obsdb_researcher', schema_name, obj.relname);
  END LOOP;
  FOR obj IN SELECT p.oid::regprocedure AS sig FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
             WHERE n.nspname = schema_name AND p.proname LIKE 'obsdb\_%' AND p.prokind = 'f' LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO obsdb_researcher', obj.sig);
  END LOOP;

  -- Pipeline: DML everywhere (the job queue included), never DDL; alembic_version read-only.
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO obsdb_pipeline', schema_name);
  IF to_regclass(format('%I.alembic_version', schema_name)) IS NOT NULL THEN
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.alembic_version FROM obsdb_pipeline', schema_name);
  END IF;
  EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO obsdb_pipeline', schema_name);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO obsdb_pipeline', schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT EXECUTE ON FUNCTIONS TO obsdb_pipeline', schema_name);
END
$grants$;
