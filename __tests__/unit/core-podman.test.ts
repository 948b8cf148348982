import { describe, expect, it } from '@jest/globals';
import {
  containersConfVariable,
  parsePodmanVersion,
  podmanVersion,
  withoutRemoteClientEnv,
} from '../../src/core/podman.js';

const v = (text: string) => parsePodmanVersion(text)!;

describe('podman version', () => {
  it('reads release, dev and two-part versions as podman spells them', () => {
    expect(v('podman version 4.3.1')).toEqual({ major: 4, minor: 3, patch: 1, text: '4.3.1' });
    expect(v('podman version 5.3.0-dev')).toEqual({ major: 5, minor: 3, patch: 0, text: '5.3.0-dev' });
    expect(v('4.9.3-dev\n')).toEqual({ major: 4, minor: 9, patch: 3, text: '4.9.3-dev' });
    expect(v('5.0')).toEqual({ major: 5, minor: 0, patch: 0, text: '5.0' });
    expect(parsePodmanVersion('no version here')).toBeUndefined();
  });

  it('asks the installed client, never a service CONTAINER_HOST points at', async () => {
    const saved = process.env.CONTAINER_HOST;
    process.env.CONTAINER_HOST = 'unix:///nonexistent/ici.sock';
    try {
      expect((await podmanVersion()).major).toBeGreaterThanOrEqual(4);
    } finally {
      if (saved === undefined) delete process.env.CONTAINER_HOST;
      else process.env.CONTAINER_HOST = saved;
    }
  });
});

describe('containers.conf variable', () => {
  it('is CONTAINERS_CONF_OVERRIDE from podman 4.4 on, CONTAINERS_CONF before', () => {
    expect(containersConfVariable(v('4.3.1'))).toBe('CONTAINERS_CONF');
    expect(containersConfVariable(v('4.4.0'))).toBe('CONTAINERS_CONF_OVERRIDE');
    expect(containersConfVariable(v('5.0'))).toBe('CONTAINERS_CONF_OVERRIDE');
  });
});

describe('remote client variables', () => {
  it('are dropped, everything else kept', () => {
    expect(
      withoutRemoteClientEnv({
        CONTAINER_HOST: 'unix:///s',
        CONTAINER_CONNECTION: 'x',
        CONTAINER_SSHKEY: 'k',
        DOCKER_HOST: 'tcp://d',
        HOME: '/h',
      }),
    ).toEqual({ HOME: '/h' });
  });
});
