/** The push's source, read once: from the Docker engine for `docker-daemon:`, else as core/oci/source.ts does. */
import type { LocalImage } from '../../core/oci/layout.js';
import { openImageSource, type ImageSourceSpec, type OpenSourceOptions } from './source.js';
import { readDockerDaemonImage } from './docker-daemon.js';

/** `engineImageId`: for a docker-daemon source, the engine's ID of the image exported. */
export function readImageSource(
  spec: ImageSourceSpec,
  options: OpenSourceOptions,
): Promise<LocalImage & { engineImageId?: string }> {
  return spec.transport === 'docker-daemon'
    ? readDockerDaemonImage(spec.location, options)
    : openImageSource(spec, options);
}
